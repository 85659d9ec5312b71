"""Test support shipped with the package (as ``captum.testing``): tiny offline models, the
one tolerance table and tensor comparison, the known-answer region model and what the
registry-wide contract test needs. The tests, the doctests and the benchmarks all use it.

Importing it needs neither pytest nor a network connection.

Examples
--------
>>> from captum_vit.attr import GenericAttention
>>> from captum_vit.testing import assert_close, input_for, make_vit
>>> model = make_vit("reg")
>>> x = input_for(model, batch=2)
>>> both = GenericAttention(model).attribute(x, target=[0, 1], return_patch_map=True)
>>> assert_close(GenericAttention(model).attribute(x[1:], target=1, return_patch_map=True), both[1:], "fp32_loose")
"""

from captum_vit.testing.compare import TOL, assert_close
from captum_vit.testing.contract import CONTRACT_OPTIONS, ModelSnapshot, assert_untouched, options_for, snapshot
from captum_vit.testing.models import (
    ALL_VIT_KINDS,
    NUM_CLASSES,
    VIT_KINDS,
    input_for,
    make_cnn,
    make_vit,
    with_class_weights,
)
from captum_vit.testing.region_model import RegionModel, top_left_region

__all__ = [
    "ALL_VIT_KINDS",
    "CONTRACT_OPTIONS",
    "NUM_CLASSES",
    "TOL",
    "VIT_KINDS",
    "ModelSnapshot",
    "RegionModel",
    "assert_close",
    "assert_untouched",
    "input_for",
    "make_cnn",
    "make_vit",
    "options_for",
    "snapshot",
    "top_left_region",
    "with_class_weights",
]
