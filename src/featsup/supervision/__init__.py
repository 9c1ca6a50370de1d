"""Encoder feature supervision: a frozen teacher guiding any student's encoder.

One module per job: :mod:`~featsup.supervision.supervisor` (:class:`FeatureSupervisor`),
:mod:`~featsup.supervision.taps` (reading a model's encoder levels),
:mod:`~featsup.supervision.levels` (level metadata of recognised models),
:mod:`~featsup.supervision.teacher` (the encoding-teacher recipe),
:mod:`~featsup.supervision.match` (a teacher shaped like a given student),
:mod:`~featsup.supervision.cache` (the teacher's features, predicted and saved once) and
:mod:`~featsup.supervision.variants` (the paper's six training variants).
:func:`supervised_student` tells whether a (wrapped) model is a :class:`FeatureSupervisor`
and returns its student.
"""

from __future__ import annotations

from featsup._wrappers import supervised_student
from featsup.supervision.cache import TeacherFeatureCache, build_feature_cache
from featsup.supervision.levels import EncoderLevel, encoder_levels
from featsup.supervision.match import matching_teacher
from featsup.supervision.supervisor import FeatureSupervisor, SupervisedOutput
from featsup.supervision.teacher import (
    reconstruction_dice,
    train_encoding_teacher,
)
from featsup.supervision.variants import (
    VARIANTS,
    build_variant,
    parse_variant,
    segmentation_step,
)

__all__ = [
    "VARIANTS",
    "EncoderLevel",
    "FeatureSupervisor",
    "SupervisedOutput",
    "TeacherFeatureCache",
    "build_feature_cache",
    "build_variant",
    "encoder_levels",
    "matching_teacher",
    "parse_variant",
    "reconstruction_dice",
    "segmentation_step",
    "supervised_student",
    "train_encoding_teacher",
]
