"""Data produced by the detector core. :class:`AlignedFace` (consumed by the fitter and eyeball
cores) lives in :mod:`ffhquv.aligned` and is re-exported here for old imports."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ffhquv.aligned import AlignedFace, landmarks_from_proto, landmarks_to_proto

__all__ = ["AlignedFace", "DetectionResult", "FaceBox", "landmarks_from_proto",
           "landmarks_to_proto"]


@dataclass
class FaceBox:
    """One detected face in the original (EXIF-oriented) image.

    Attributes:
        box: ``(left, top, right, bottom)`` pixels.
        score: detector confidence (HOG decision value or MMOD confidence).
        landmarks: ``[68, 2]`` float32 iBUG landmarks in original-image pixels.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])


@dataclass
class DetectionResult:
    """What the detector core returns for one photo (proto: ``DetectResponse``)."""

    faces: list[FaceBox]
    selected_index: int
    image_size: tuple[int, int]  # (width, height) after EXIF orientation
    exif_orientation: int
    aligned: AlignedFace
    image: np.ndarray  # uint8 [H, W, 3], the oriented photo
    notes: list[str] = field(default_factory=list)
    visualization: np.ndarray | None = None  # uint8 [H, W, 3] panel image when requested
