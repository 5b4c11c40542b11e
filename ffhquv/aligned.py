"""The aligned face: what the detector produces and the fitter and eyeball cores consume.

A wire type (proto ``detector.v1.AlignedFace``) shared by services, so it lives in the base
package; the detector's own results (:class:`services.detector.types.FaceBox`,
``DetectionResult``) stay in the detector. Pixels: x right, y down, centres at integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ffhquv.vocab import PARSE_SOURCE_LANDMARKS

__all__ = ["AlignedFace", "landmarks_from_proto", "landmarks_to_proto"]


@dataclass
class AlignedFace:
    """The selected face, aligned for fitting (proto: ``detector.v1.AlignedFace``).

    Attributes:
        crop: ``uint8 [224, 224, 3]`` RGB fitting crop.
        crop_landmarks: ``float32 [68, 2]`` landmarks in crop pixels.
        image_to_crop: ``float64 [2, 3]`` affine from original-image pixels to crop pixels.
        crop_hires: ``uint8 [S, S, 3]`` the same crop at S = 512 or 1024 (scale S / 224).
        skin_mask: ``uint8 [224, 224]`` skin probability 0..255.
        parse_mask: ``uint8 [224, 224]`` :class:`ffhquv.vocab.ParseLabel` values (0 background,
            1 skin, 2 brows, 3 eyes, 4 nose, 5 lips, 6 mouth interior).
        parse_source: "landmarks" or "bisenet" (``ffhquv.vocab.PARSE_SOURCE_*``).
    """

    crop: np.ndarray
    crop_landmarks: np.ndarray
    image_to_crop: np.ndarray
    crop_hires: np.ndarray
    skin_mask: np.ndarray
    parse_mask: np.ndarray
    parse_source: str = PARSE_SOURCE_LANDMARKS

    def to_proto(self):
        from ffhquv.imaging import to_raw
        from ffhquv.pb import common_pb2, detector_pb2

        return detector_pb2.AlignedFace(
            crop=to_raw(self.crop),
            crop_landmarks=landmarks_to_proto(self.crop_landmarks),
            image_to_crop=common_pb2.Affine2D(m=self.image_to_crop.ravel().tolist()),
            crop_hires=to_raw(self.crop_hires),
            skin_mask=to_raw(self.skin_mask),
            parse_mask=to_raw(self.parse_mask),
            parse_source=self.parse_source,
        )

    def save_npz(self, path) -> None:
        """Write the aligned face to a compressed ``.npz`` (e.g. to fit it on another machine)."""
        np.savez_compressed(path, crop=self.crop, crop_landmarks=self.crop_landmarks,
                            image_to_crop=self.image_to_crop, crop_hires=self.crop_hires,
                            skin_mask=self.skin_mask, parse_mask=self.parse_mask,
                            parse_source=np.array(self.parse_source))

    @classmethod
    def load_npz(cls, path) -> AlignedFace:
        with np.load(path, allow_pickle=False) as d:
            return cls(crop=d["crop"], crop_landmarks=d["crop_landmarks"],
                       image_to_crop=d["image_to_crop"], crop_hires=d["crop_hires"],
                       skin_mask=d["skin_mask"], parse_mask=d["parse_mask"],
                       parse_source=str(d["parse_source"]))

    @classmethod
    def from_proto(cls, p) -> AlignedFace:
        """Raises :class:`ffhquv.errors.InvalidInput` when a part is missing or malformed."""
        from ffhquv.errors import InvalidInput
        from ffhquv.imaging import from_raw

        crop = from_raw(p.crop)
        if crop.shape != (224, 224, 3):
            raise InvalidInput(f"aligned crop must be 224x224 RGB, got {crop.shape}")
        lm = landmarks_from_proto(p.crop_landmarks)
        if lm.shape != (68, 2):
            raise InvalidInput(f"aligned face needs 68 crop landmarks, got {len(lm)}")
        if len(p.image_to_crop.m) != 6:
            raise InvalidInput("image_to_crop must have 6 values")
        hires = from_raw(p.crop_hires)
        if hires.ndim != 3 or hires.shape[0] != hires.shape[1]:
            raise InvalidInput(f"crop_hires must be square RGB, got {hires.shape}")
        skin = from_raw(p.skin_mask)
        parse = from_raw(p.parse_mask)
        if skin.shape != (224, 224) or parse.shape != (224, 224):
            raise InvalidInput("skin_mask and parse_mask must be 224x224 single-channel")
        return cls(crop=crop, crop_landmarks=lm,
                   image_to_crop=np.asarray(p.image_to_crop.m, np.float64).reshape(2, 3),
                   crop_hires=hires, skin_mask=skin, parse_mask=parse,
                   parse_source=p.parse_source or PARSE_SOURCE_LANDMARKS)


def landmarks_to_proto(lm: np.ndarray):
    from ffhquv.pb import common_pb2

    return common_pb2.Landmarks(
        points=[common_pb2.Point2(x=float(x), y=float(y)) for x, y in np.asarray(lm)])


def landmarks_from_proto(p) -> np.ndarray:
    return np.array([[q.x, q.y] for q in p.points], dtype=np.float32).reshape(-1, 2)
