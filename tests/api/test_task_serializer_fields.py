"""TaskSerializer builds its fields once per class (tasks/api.py): every instance still gets fields of
its own, bound to it, the same fields ModelSerializer builds."""

from __future__ import annotations

from rest_framework import serializers

from tasks.api import TaskSerializer


def _built_by_drf() -> dict[str, serializers.Field]:
    return serializers.ModelSerializer.get_fields(TaskSerializer())


def test_each_instance_has_fields_of_its_own_bound_to_it() -> None:
    first, second = TaskSerializer(), TaskSerializer(data={"title": ""})
    assert list(first.fields) == list(second.fields)
    for name, field in first.fields.items():
        assert field is not second.fields[name]
        assert field.parent is first
        assert second.fields[name].parent is second
    assert not second.is_valid()
    assert "title" in second.errors
    assert first.fields["title"].parent is first, "validating one instance leaves the other's fields alone"


def test_the_fields_are_the_ones_model_serializer_builds() -> None:
    ours, drf = TaskSerializer().get_fields(), _built_by_drf()
    assert list(ours) == list(drf)
    for name, field in drf.items():
        copy = ours[name]
        assert type(copy) is type(field), name
        assert (copy.read_only, copy.required, copy.allow_null) == (field.read_only, field.required, field.allow_null)
        assert repr(copy) == repr(field), name
