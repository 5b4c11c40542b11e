"""The aligned face: what the detector produces and the fitter and eyeball cores consume.

A wire type (proto ``detector.v1.AlignedFace``) shared by services, so it lives in the base
package; the detector's own results (:class:`services.detector.types.FaceBox`,
``DetectionResult``) stay in the detector. Pixels: x right, y down, centres at integers.

Geometry of the two crops (docs/conventions.md, "Geometry"): the fitting crop is
``CROP_SIZE`` = 224 pixels a side; the hi-res crop (``S`` = 512 or 1024) is the same window
sampled ``k = S / 224`` times finer. Pixel ``i`` of the 224 crop covers ``[i - 0.5, i + 0.5]``,
i.e. hi-res ``[k i - 0.5, k i + k - 0.5]``, so a position ``x`` in the 224 crop is
``k (x + 0.5) - 0.5`` in the hi-res crop (:func:`crop_to_hires`); the camera scales the same
way (``ffhquv/render/camera.py``, ``Camera.scaled``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ffhquv.vocab import PARSE_SOURCE_LANDMARKS

__all__ = ["CROP_SIZE", "AlignedFace", "crop_to_hires", "eye_photo", "eye_region",
           "landmarks_from_proto", "landmarks_to_proto"]

#: side of the fitting crop in pixels
CROP_SIZE = 224


def crop_to_hires(points: np.ndarray, size: int, crop_size: int = CROP_SIZE) -> np.ndarray:
    """Positions in the ``crop_size`` fitting crop -> the same positions in a ``size`` crop
    of the same window (pixel centres at integers): ``k (x + 0.5) - 0.5``, ``k = size /
    crop_size``.

    Args:
        points: ``float [..., 2]`` (or any shape) pixel coordinates in the 224 crop.
        size: side of the hi-res crop (``AlignedFace.crop_hires.shape[0]``).
    Returns:
        ``float64`` array of the same shape, in hi-res crop pixels.
    """
    k = size / crop_size
    return (np.asarray(points, np.float64) + 0.5) * k - 0.5


def eye_region(image: np.ndarray, landmarks: np.ndarray, margin: float = 0.25
               ) -> tuple[np.ndarray, np.ndarray]:
    """The part of ``image`` around both eyes, and the landmarks in its pixels.

    The box spans the eye landmarks (36..47) widened on every side by ``margin`` times the
    wider eye's width (corner to corner) plus 4 pixels, clipped to the image: anything that
    looks at the eyes within ``margin`` eye widths of their landmarks sees the same pixels
    (the iris sampler pads 0.1 eye width + 2 px), at about a tenth of the bytes of the crop.

    Args:
        image: ``uint8 [H, W, C]``.
        landmarks: ``[68, 2]`` iBUG landmarks in ``image`` pixels.
        margin: extra border in eye widths.
    Returns:
        ``(patch, landmarks_in_patch)``: ``uint8 [h, w, C]`` (a view of ``image``) and
        ``float64 [68, 2]`` (``landmarks`` minus the patch's top-left pixel).
    """
    lm = np.asarray(landmarks, np.float64).reshape(68, 2)
    eyes = lm[36:48]
    width = max(float(np.linalg.norm(lm[36] - lm[39])), float(np.linalg.norm(lm[42] - lm[45])))
    pad = margin * width + 4
    h, w = image.shape[:2]
    x0 = int(np.clip(np.floor(eyes[:, 0].min() - pad), 0, w))
    y0 = int(np.clip(np.floor(eyes[:, 1].min() - pad), 0, h))
    x1 = int(np.clip(np.ceil(eyes[:, 0].max() + pad) + 1, x0, w))
    y1 = int(np.clip(np.ceil(eyes[:, 1].max() + pad) + 1, y0, h))
    return image[y0:y1, x0:x1], lm - [x0, y0]


@dataclass
class AlignedFace:
    """The selected face, aligned for fitting (proto: ``detector.v1.AlignedFace``).

    Attributes:
        crop: ``uint8 [224, 224, 3]`` RGB fitting crop.
        crop_landmarks: ``float32 [68, 2]`` landmarks in crop pixels.
        image_to_crop: ``float64 [2, 3]`` affine from original-image pixels to crop pixels.
        crop_hires: ``uint8 [S, S, 3]`` the same crop at S = 512 or 1024 (position ``x`` of
            the 224 crop is :func:`crop_to_hires` ``(x, S)`` here).
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


def eye_photo(aligned) -> tuple:
    """What the eyeball service needs of a ``detector.v1.AlignedFace``: the eye region
    (:func:`eye_region`) of its hi-res crop and the 68 landmarks in that region's pixels
    (:func:`crop_to_hires`, then shifted), for ``eyeball.v1.PlaceRequest.photo`` /
    ``photo_landmarks``. The whole hi-res crop already went to the fitter; this sends a few
    per cent of its bytes.

    Args:
        aligned: ``detector.v1.AlignedFace`` message.
    Returns:
        ``(common.v1.RawImage, common.v1.Landmarks)``; both empty when the face has no hi-res
        crop or not 68 landmarks (the eyeball service then uses its default iris colour).
    """
    from ffhquv.imaging import from_raw, to_raw
    from ffhquv.pb import common_pb2

    if not aligned.crop_hires.width or len(aligned.crop_landmarks.points) != 68:
        return common_pb2.RawImage(), common_pb2.Landmarks()
    hires = from_raw(aligned.crop_hires)
    lm = crop_to_hires(landmarks_from_proto(aligned.crop_landmarks), hires.shape[1])
    patch, lm_patch = eye_region(hires, lm)
    if not patch.size:
        return common_pb2.RawImage(), common_pb2.Landmarks()
    return to_raw(patch), landmarks_to_proto(lm_patch)


def landmarks_to_proto(lm: np.ndarray):
    from ffhquv.pb import common_pb2

    return common_pb2.Landmarks(
        points=[common_pb2.Point2(x=float(x), y=float(y)) for x, y in np.asarray(lm)])


def landmarks_from_proto(p) -> np.ndarray:
    return np.array([[q.x, q.y] for q in p.points], dtype=np.float32).reshape(-1, 2)
