"""Detector core: photo bytes -> faces, 68 landmarks, aligned crops and masks (plain Python).

Pipeline of :meth:`Detector.detect`:

1. :func:`services.detector.decode.decode_image` (limits, EXIF orientation, 8-bit RGB);
2. face detection with dlib HOG (default) or the MMOD CNN; boxes are scaled back to the
   original. HOG scans a copy at most ``detect_max_side`` long, upsampled once below
   ``upsample_below`` (faces down to ~40 px; FFHQ-UV's own preprocessing); by default
   (``quick_side``) it first looks for the largest face on a small copy, not upsampled;
3. 68 landmarks by dlib's shape predictor on the ORIGINAL oriented image, for every face;
4. faces sorted by box area (descending), one selected ('largest', 'only' or an index);
5. :func:`services.detector.align.align_face` (224 crop, S x S hi-res crop, affine);
6. :func:`services.detector.masks.compute_masks` (skin probability, parse mask);
7. optional visualisation panel.

All coordinates are pixels of the EXIF-oriented original image (x right, y down, pixel
centres at integers, dlib convention) unless a name says crop.

Model files come from the ``face_recognition_models`` package (located without importing it,
so no ``pkg_resources`` warning), or from ``models_dir`` when given; the 68-point landmark
model can be any dlib shape predictor file (``landmark_model`` / ``FFHQUV_LANDMARK_MODEL``),
e.g. one licensed for commercial use (README, "Models and licences").

Thread safety: one :class:`Detector` serves concurrent gRPC calls. Each thread gets its own
HOG detector (dlib releases the GIL while it scans, so threads detect in parallel), a copy of
one built per process (:func:`hog_detector`), while the shape predictor and the CNN (large,
loaded once) are guarded by locks.
"""

from __future__ import annotations

import importlib.util
import logging
import pickle
import threading
from pathlib import Path

import cv2
import dlib
import numpy as np

from ffhquv.config import cache_dir, detect_quick_side
from ffhquv.diskcache import write_atomically
from ffhquv.errors import (
    BackendUnavailable,
    InvalidInput,
    NoFace,
    PreconditionFailed,
    image_error,
)
from services.detector import align, masks
from services.detector.decode import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_SIDE,
    decode_image,
)
from services.detector.types import AlignedFace, DetectionResult, FaceBox

SHAPE_PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
CNN_FILE = "mmod_human_face_detector.dat"
BACKENDS = ("hog", "cnn")
UNWRAP_SIZES = (512, 1024)

log = logging.getLogger(__name__)

_HOG_STATE: bytes | None = None  # dlib's frontal face detector, pickled once per process
_HOG_LOCK = threading.Lock()


def hog_detector() -> dlib.fhog_object_detector:
    """A new dlib frontal face (HOG) detector of its own, for one thread.

    ``dlib.get_frontal_face_detector()`` decodes its model each time (about 0.23 s, 0.6 s on a
    busy host: most of a folder's detection time when each photo's thread built one); the
    process makes it once (:func:`_frontal_face_detector`) and each call unpickles a copy
    (about 1 ms) that finds the same faces with the same scores."""
    global _HOG_STATE
    with _HOG_LOCK:
        if _HOG_STATE is None:
            _HOG_STATE = pickle.dumps(_frontal_face_detector())
        state = _HOG_STATE
    return pickle.loads(state)


def _frontal_face_detector() -> dlib.fhog_object_detector:
    """dlib's frontal face detector, read from the cache (``<FFHQUV_CACHE_DIR>/dlib/``, dlib's
    own file format, about 1 ms: the first step of a cold ``ffhquv fit``), else built and
    saved there; a file that cannot be read or written is built again / skipped."""
    path = cache_dir() / "dlib" / f"frontal_face_detector-{dlib.__version__}.svm"
    if path.is_file():
        try:
            return dlib.fhog_object_detector(str(path))
        except RuntimeError as e:
            log.warning("HOG detector cache unreadable, building again",
                        extra={"path": str(path), "error": str(e)})
    det = dlib.get_frontal_face_detector()
    write_atomically(path, lambda tmp: det.save(str(tmp)), "HOG detector")
    return det


def models_directory() -> Path:
    """Folder of the ``face_recognition_models`` package's ``.dat`` files."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the face_recognition_models package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def load_parser(checkpoints_dir: str | Path | None = None, device: str = "cpu"
                ) -> masks.FaceParser | None:
    """The BiSeNet face parser when ``parsing_model/79999_iter.pth`` is under
    ``checkpoints_dir`` (None: ``FFHQUV_CHECKPOINTS_DIR``), else None.

    With a checkpoints directory set, a missing or unusable file is logged once (WARNING, with
    its expected path; the landmark-polygon parse mask is used instead). Without one, None is
    returned silently.
    """
    from ffhquv.checkpoints import expected_path, load_optional

    if expected_path("parsing", checkpoints_dir) is None:
        return None
    from services.detector.bisenet import load_bisenet

    return load_optional("parsing", lambda p: load_bisenet(p, device), checkpoints_dir)


def _model_file(models_dir: Path, name: str) -> str:
    p = models_dir / name
    if not p.is_file():
        raise FileNotFoundError(f"dlib model file missing: {p}")
    return str(p)


def landmark_model_path(models_dir: Path | None = None,
                        landmark_model: str | Path | None = None) -> Path:
    """The dlib 68-point shape predictor file: ``landmark_model``, else
    ``FFHQUV_LANDMARK_MODEL``, else ``shape_predictor_68_face_landmarks.dat`` in ``models_dir``
    (default: face_recognition_models). Raises FileNotFoundError naming the path."""
    from ffhquv.config import landmark_model as configured

    chosen = landmark_model or configured()
    if chosen:
        p = Path(chosen).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"landmark model missing: {p} (from --landmark-model / "
                                    "FFHQUV_LANDMARK_MODEL; a dlib 68-point shape predictor "
                                    ".dat file)")
        return p
    return Path(_model_file(models_dir or models_directory(), SHAPE_PREDICTOR_FILE))


def _resize_longest(img: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Area-downscale so the longest side is at most ``max_side``; returns (image, factor)."""
    h, w = img.shape[:2]
    if max(h, w) <= max_side:
        return img, 1.0
    f = max_side / max(h, w)
    nw, nh = max(1, round(w * f)), max(1, round(h * f))
    small = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    return small, nw / w



def _to_original(box: tuple[int, int, int, int], f: float) -> tuple[float, float, float, float]:
    """A box on a copy scaled by ``f`` in original pixels (pixel centres at integers: a copy
    pixel x covers original (x + .5) / f - .5; exact for f = 1)."""
    return tuple(float((v + 0.5) / f - 0.5) for v in box)


def partial_face_note(landmarks: np.ndarray, width: int, height: int,
                      margin: float = 0.0) -> str | None:
    """A warning when the face is cut off by the image border: some of its ``float [68, 2]``
    landmarks (pixels) lie outside ``[0, width) x [0, height)``; their part of the head is
    guessed by the model, not seen in the photo."""
    lm = np.asarray(landmarks, np.float64)
    outside = ((lm[:, 0] < -margin) | (lm[:, 0] > width - 1 + margin)
               | (lm[:, 1] < -margin) | (lm[:, 1] > height - 1 + margin))
    n = int(outside.sum())
    if n == 0:
        return None
    sides = [name for name, m in (("left", lm[:, 0] < 0), ("right", lm[:, 0] > width - 1),
                                  ("top", lm[:, 1] < 0), ("bottom", lm[:, 1] > height - 1))
             if m.any()]
    return (f"partial face: {n} of {len(lm)} landmarks lie outside the image "
            f"({', '.join(sides)} edge); that part of the head is estimated, not seen")


class Detector:
    """Face detection, landmarks, alignment and masks for one photo at a time.

    Args:
        backend: default detector, ``"hog"`` (dlib frontal face detector) or ``"cnn"``
            (dlib MMOD). The CNN model is loaded on first use.
        models_dir: folder with the dlib ``.dat`` files (default: face_recognition_models).
        landmark_model: the 68-point shape predictor file (default: ``FFHQUV_LANDMARK_MODEL``,
            else the one in ``models_dir``), see :func:`landmark_model_path`.
        upsample: detector upsampling passes; None = 1 when the detection image's longest
            side is at most ``upsample_below`` pixels, else 0 (finds faces down to ~40 px).
        min_score: faces scoring at least this are reported.
        fallback_score: when no face reaches ``min_score``, the best detection scoring at
            least this is used (with a note), so a weak but real face (glasses, profile) is
            not lost while weak false positives never add to strong faces.
        quick_side: for the ``'largest'`` selection (the default) HOG can look first at a
            copy no longer than this, not upsampled: faces of at least 1/8 of the photo's
            longer side, a fifth of the full scan's time on a 1000 px photo. When it finds a
            face scoring ``min_score``, those are the faces listed (smaller ones beside a big
            one are not); else the full scan below runs. ``'only'`` and index selections
            always run the full scan (they need every face). None = ``FFHQUV_DETECT_QUICK_SIDE``
            (default 640; 0: the full scan only, as FFHQ-UV's preprocessing does). The
            quick look's landmarks are within ~1 % of the eye distance of the full scan's,
            about dlib's own jitter for a box one pixel off; over 24 test photos the heads
            are as good either way, a few photos' skin or hair differing as they do for any
            such jitter (``BENCHMARKS.md``, nineteenth and twenty-ninth sessions).
        detect_max_side: HOG's full scan runs on a copy no longer than this (CNN:
            ``cnn_max_side``).
        cnn_upsample: upsampling of the CNN (slow on CPU: about 4x per pass).
        max_bytes, max_pixels, min_side: decoding limits (see :func:`decode_image`).
        parser: optional learned face parser (BiSeNet) for the parse mask, see
            :class:`services.detector.masks.FaceParser`; None uses landmark polygons.
    """

    def __init__(
        self,
        backend: str = "hog",
        *,
        models_dir: str | Path | None = None,
        upsample: int | None = None,
        upsample_below: int = 1000,
        min_score: float = 0.3,
        fallback_score: float = 0.0,
        quick_side: int | None = None,
        detect_max_side: int = 1600,
        cnn_max_side: int = 800,
        cnn_upsample: int = 0,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        min_side: int = DEFAULT_MIN_SIDE,
        parser: masks.FaceParser | None = None,
        landmark_model: str | Path | None = None,
    ):
        self.backend = self._check_backend(backend)
        self.models_dir = Path(models_dir) if models_dir else models_directory()
        self.upsample = upsample
        self.upsample_below = upsample_below
        self.min_score = min_score
        self.fallback_score = min(fallback_score, min_score)
        self.quick_side = detect_quick_side() if quick_side is None else quick_side
        self.detect_max_side = detect_max_side
        self.cnn_max_side = cnn_max_side
        self.cnn_upsample = cnn_upsample
        self.limits = dict(max_bytes=max_bytes, max_pixels=max_pixels, min_side=min_side)
        self.parser = parser
        self.landmark_model = landmark_model_path(self.models_dir, landmark_model)
        self.shape_predictor = dlib.shape_predictor(str(self.landmark_model))
        self._sp_lock = threading.Lock()
        self._cnn = None
        self._cnn_lock = threading.Lock()
        self._local = threading.local()
        if self.backend == "cnn":
            self._cnn_model()

    # ------------------------------------------------------------------ models

    @staticmethod
    def _check_backend(backend: str) -> str:
        if backend not in BACKENDS:
            raise InvalidInput(f"unknown detector backend {backend!r}; use one of {BACKENDS}")
        return backend

    def _hog(self):
        det = getattr(self._local, "hog", None)
        if det is None:
            det = self._local.hog = hog_detector()
        return det

    def _cnn_model(self):
        with self._cnn_lock:
            if self._cnn is None:
                try:
                    path = _model_file(self.models_dir, CNN_FILE)
                except FileNotFoundError as e:
                    raise BackendUnavailable(f"CNN face detector unavailable: {e}; use the "
                                             "HOG backend") from e
                self._cnn = dlib.cnn_face_detection_model_v1(path)
            return self._cnn

    def _upsample_for(self, img: np.ndarray) -> int:
        if self.upsample is not None:
            return self.upsample
        return 1 if max(img.shape[:2]) <= self.upsample_below else 0

    # ------------------------------------------------------------------ stages

    def find_faces(self, rgb: np.ndarray, backend: str | None = None, every: bool = False
                   ) -> tuple[list[tuple[tuple[float, float, float, float], float]], list[str]]:
        """Face boxes of an oriented image.

        Args:
            rgb: ``uint8 [H, W, 3]`` RGB.
            backend: ``"hog"`` / ``"cnn"``; None uses the detector's default.
            every: HOG: every face down to the full scan's size (no quick look): what
                ``'only'`` and index selections need.
        Returns:
            ``([((left, top, right, bottom), score), ...], notes)`` in ``rgb`` pixels, dlib
            rectangle convention (right / bottom inclusive), unsorted.
        """
        backend = self._check_backend(backend or self.backend)
        notes: list[str] = []
        if backend == "hog" and self.quick_side > 0 and not every:
            quick, fq = _resize_longest(rgb, self.quick_side)
            strong = [x for x in self._hog_boxes(quick, 0, fq) if x[1] >= self.min_score]
            if strong:
                return strong, notes
        max_side = self.detect_max_side if backend == "hog" else self.cnn_max_side
        work, f = _resize_longest(rgb, max_side)
        if f != 1.0:
            notes.append(f"faces detected on a {work.shape[1]}x{work.shape[0]} copy of the "
                         f"{rgb.shape[1]}x{rgb.shape[0]} image")
        if backend == "hog":
            found = self._hog_boxes(work, self._upsample_for(work), f)
        else:
            work = np.ascontiguousarray(work)
            cnn = self._cnn_model()
            with self._cnn_lock:
                dets = cnn(work, self.cnn_upsample)
            found = [(_to_original((d.rect.left(), d.rect.top(), d.rect.right(),
                                    d.rect.bottom()), f), float(d.confidence))
                     for d in dets if d.confidence >= self.fallback_score]
        strong = [x for x in found if x[1] >= self.min_score]
        if not strong and found:
            best = max(found, key=lambda x: x[1])
            notes.append(f"no detection scored {self.min_score} or more; using the best weak "
                         f"one (score {best[1]:.2f})")
            strong = [best]
        return strong, notes

    def _hog_boxes(self, work: np.ndarray, upsample: int, f: float
                   ) -> list[tuple[tuple[float, float, float, float], float]]:
        """HOG's detections scoring ``fallback_score`` or more on ``work`` (a copy scaled by
        ``f``), boxes in original pixels."""
        rects, scores, _ = self._hog().run(np.ascontiguousarray(work), upsample,
                                           self.fallback_score)
        return [(_to_original((r.left(), r.top(), r.right(), r.bottom()), f), float(s))
                for r, s in zip(rects, scores, strict=True)]

    def landmarks(self, rgb: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
        """``float32 [68, 2]`` landmarks of the face in ``box`` (``rgb`` pixels)."""
        rect = dlib.rectangle(*(int(round(v)) for v in box))
        with self._sp_lock:
            shape = self.shape_predictor(rgb, rect)
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)

    def largest_face_landmarks(self, rgb: np.ndarray) -> np.ndarray | None:
        """``float32 [68, 2]`` landmarks of the largest face the default backend finds in
        ``uint8 [H, W, 3]`` RGB, or None when there is none: a 68-point landmarker for renders
        (``ffhquv build-model`` passes it to the fitter's default face-model build). The full
        scan, no quick look: the built model must not depend on which landmarker is wired
        (the build alone runs dlib the same way)."""
        boxes, _notes = self.find_faces(rgb, every=True)
        if not boxes:
            return None
        box = max(boxes, key=lambda b: (b[0][2] - b[0][0]) * (b[0][3] - b[0][1]))[0]
        return self.landmarks(rgb, box)

    @staticmethod
    def select(faces: list[FaceBox], selection: str | int) -> int:
        """Index of the face to prepare; ``faces`` sorted by area, descending."""
        n = len(faces)
        if selection == "largest":
            return 0
        if selection == "only":
            if n > 1:
                raise PreconditionFailed(
                    f"{n} faces detected; selection 'only' needs exactly one face (choose "
                    f"'largest' or a face index 0..{n - 1})")
            return 0
        if isinstance(selection, bool) or not isinstance(selection, int | np.integer):
            raise InvalidInput(f"unknown face selection {selection!r}; use 'largest', 'only' "
                               "or a face index")
        if selection < 0:
            raise InvalidInput(f"face index must be >= 0, got {selection}")
        if selection >= n:
            raise PreconditionFailed(
                f"face index {selection} out of range: {n} face{'s' if n != 1 else ''} "
                f"detected (valid indices 0..{n - 1})")
        return int(selection)

    # ------------------------------------------------------------------ entry point

    def detect(
        self,
        data: bytes,
        *,
        selection: str | int = "largest",
        unwrap_size: int = 1024,
        want_visualization: bool = False,
        backend: str | None = None,
    ) -> DetectionResult:
        """Detect, landmark, align and mask the faces of one uploaded photo.

        Args:
            data: JPEG / PNG bytes.
            selection: ``"largest"``, ``"only"`` or an index into the area-sorted faces.
            unwrap_size: side S of ``aligned.crop_hires`` (512 or 1024).
            want_visualization: also build the ``uint8 [224, 896, 3]`` panel.
            backend: ``"hog"`` / ``"cnn"`` for this call (None: the default).
        Returns:
            :class:`DetectionResult`; landmarks in original (oriented) pixels.
        Raises:
            InvalidInput: bad image or option. NoFace: no face found.
            PreconditionFailed: 'only' with several faces, index out of range.
        """
        if unwrap_size not in UNWRAP_SIZES:
            raise InvalidInput(f"unwrap_size must be 512 or 1024, got {unwrap_size}")
        backend = self._check_backend(backend or self.backend)
        if not (selection in ("largest", "only") or isinstance(selection, int | np.integer)):
            self.select([], selection)  # raises the precise error
        try:
            img = decode_image(data, **self.limits)
        except InvalidInput as e:
            raise image_error(e) from e
        rgb = img.rgb
        notes = list(img.notes)
        # the largest face needs the quick look only; 'only' and an index, every face
        found, det_notes = self.find_faces(rgb, backend, every=selection != "largest")
        notes += det_notes
        if not found:
            raise NoFace("no face detected")
        faces = [FaceBox(box=box, score=score, landmarks=self.landmarks(rgb, box))
                 for box, score in found]
        faces.sort(key=lambda fb: (-fb.area, -fb.score))
        idx = self.select(faces, selection)
        face = faces[idx]
        note = partial_face_note(face.landmarks, rgb.shape[1], rgb.shape[0])
        if note:
            notes.append(note)
        crop, crop_lm, a, hires = align.align_face(rgb, face.landmarks, unwrap_size)
        skin, parse, source = masks.compute_masks(crop, crop_lm, self.parser)
        aligned = AlignedFace(crop=crop, crop_landmarks=crop_lm, image_to_crop=a,
                              crop_hires=hires, skin_mask=skin, parse_mask=parse,
                              parse_source=source)
        vis = None
        if want_visualization:
            from services.detector.vis import visualization

            vis = visualization(crop, skin, parse, crop_lm)
        return DetectionResult(faces=faces, selected_index=idx,
                               image_size=(rgb.shape[1], rgb.shape[0]),
                               exif_orientation=img.exif_orientation, aligned=aligned,
                               image=rgb, notes=notes, visualization=vis)
