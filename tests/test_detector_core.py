"""services.detector.core / align / masks / vis with the real dlib models and real photos."""

from __future__ import annotations

import threading

import cv2
import dlib
import numpy as np
import pytest
from PIL import Image

from ffhquv.errors import InvalidInput, NoFace, PreconditionFailed
from services.detector import align
from services.detector.core import (
    SHAPE_PREDICTOR_FILE,
    Detector,
    hog_detector,
    models_directory,
)
from services.detector.masks import ParseLabel
from tests.conftest import REF_PHOTOS
from tests.test_detector_decode import encode


@pytest.fixture(scope="module")
def detector() -> Detector:
    """FFHQ-UV's full scan (the quick look, the default, is :func:`quick`)."""
    return Detector(quick_side=0)


@pytest.fixture(scope="module")
def astronaut_res(detector, astronaut_rgb):
    return detector.detect(encode(astronaut_rgb), want_visualization=True)


@pytest.fixture(scope="module")
def two_faces(astronaut_rgb) -> np.ndarray:
    """A bigger astronaut (640 px) left of a normal one (512 px): 1152 x 640."""
    big = cv2.resize(astronaut_rgb, (640, 640), interpolation=cv2.INTER_CUBIC)
    canvas = np.full((640, 1152, 3), 200, np.uint8)
    canvas[:, :640] = big
    canvas[64:576, 640:] = astronaut_rgb
    return canvas


# ----------------------------------------------------------------------------- detection

def test_astronaut_one_face(astronaut_res):
    r = astronaut_res
    assert len(r.faces) == 1 and r.selected_index == 0
    assert r.image_size == (512, 512) and r.exif_orientation == 1
    f = r.faces[0]
    assert f.score > 0.3
    assert f.landmarks.shape == (68, 2) and f.landmarks.dtype == np.float32
    x0, y0, x1, y1 = f.box
    m = 0.15 * (x1 - x0)
    lm = f.landmarks
    assert ((lm[:, 0] > x0 - m) & (lm[:, 0] < x1 + m)
            & (lm[:, 1] > y0 - m) & (lm[:, 1] < y1 + m)).all()
    # anatomy sanity: eyes above the nose tip above the mouth, left eye on the image left
    assert lm[36:48, 1].mean() < lm[30, 1] < lm[48:68, 1].mean()
    assert lm[36:42, 0].mean() < lm[42:48, 0].mean()


@pytest.mark.parametrize("which", ["coffee", "flat"])
def test_no_face(detector, which):
    from skimage import data

    img = data.coffee() if which == "coffee" else np.full((300, 400, 3), 128, np.uint8)
    with pytest.raises(NoFace, match=r"^no face detected$"):
        detector.detect(encode(img))


def test_several_faces_and_selection(detector, two_faces):
    data = encode(two_faces)
    r = detector.detect(data)
    assert len(r.faces) == 2 and r.selected_index == 0
    # with the quick look 'largest' lists what it found (faces of at least 1/8 of the longer
    # side: the big one here), an index every face
    largest = Detector(quick_side=640).detect(data)
    assert len(largest.faces) == 1 and largest.selected_index == 0
    lm = r.faces[0].landmarks
    assert (np.linalg.norm(largest.faces[0].landmarks - lm, axis=1).mean()
            < 0.03 * np.linalg.norm(lm[36] - lm[45]))
    assert len(Detector(quick_side=640).detect(data, selection=0).faces) == 2
    big, small = r.faces
    assert big.area > small.area
    assert (big.box[0] + big.box[2]) / 2 < 640 < (small.box[0] + small.box[2]) / 2
    np.testing.assert_allclose(r.aligned.crop_landmarks,
                               align.transform_points(r.aligned.image_to_crop, big.landmarks),
                               atol=1e-3)
    r1 = detector.detect(data, selection=1)
    assert r1.selected_index == 1
    np.testing.assert_allclose(r1.aligned.crop_landmarks,
                               align.transform_points(r1.aligned.image_to_crop, small.landmarks),
                               atol=1e-3)
    # the same person at another size: nearly the same aligned crop
    assert np.abs(r1.aligned.crop_landmarks - r.aligned.crop_landmarks).mean() < 3.0
    with pytest.raises(PreconditionFailed, match=r"^2 faces detected; selection 'only' needs "
                                                 r"exactly one face"):
        detector.detect(data, selection="only")
    with pytest.raises(PreconditionFailed, match=r"^face index 2 out of range: 2 faces "
                                                 r"detected \(valid indices 0\.\.1\)$"):
        detector.detect(data, selection=2)
    with pytest.raises(InvalidInput, match=r"face index must be >= 0"):
        detector.detect(data, selection=-1)
    with pytest.raises(InvalidInput, match=r"unknown face selection 'biggest'"):
        detector.detect(data, selection="biggest")


def test_only_with_one_face(detector, astronaut_rgb):
    assert detector.detect(encode(astronaut_rgb), selection="only").selected_index == 0


def test_bad_options(detector, astronaut_rgb):
    with pytest.raises(InvalidInput, match=r"^unwrap_size must be 512 or 1024, got 300$"):
        detector.detect(encode(astronaut_rgb), unwrap_size=300)
    with pytest.raises(InvalidInput, match=r"unknown detector backend 'yolo'"):
        detector.detect(encode(astronaut_rgb), backend="yolo")


def test_cnn_backend(detector, astronaut_rgb, astronaut_res):
    small = np.ascontiguousarray(astronaut_rgb[0:256, 96:352])  # keep the CPU CNN quick
    r = detector.detect(encode(small), backend="cnn", unwrap_size=512)
    assert len(r.faces) == 1 and r.faces[0].score > 0.5
    hog_lm = astronaut_res.faces[0].landmarks - np.array([96, 0], np.float32)
    assert np.abs(r.faces[0].landmarks - hog_lm).mean() < 4.0


@pytest.fixture(scope="module")
def quick() -> Detector:
    """The quick look first (the default, ``FFHQUV_DETECT_QUICK_SIDE=640``)."""
    return Detector(quick_side=640)


def test_quick_side_from_the_environment(monkeypatch):
    monkeypatch.setenv("FFHQUV_DETECT_QUICK_SIDE", "0")
    assert Detector().quick_side == 0  # FFHQ-UV's full scan
    monkeypatch.setenv("FFHQUV_DETECT_QUICK_SIDE", "320")
    assert Detector().quick_side == 320
    monkeypatch.delenv("FFHQUV_DETECT_QUICK_SIDE")
    assert Detector().quick_side == 640  # the quick look by default
    monkeypatch.setenv("FFHQUV_DETECT_QUICK_SIDE", "big")
    with pytest.raises(ValueError, match="FFHQUV_DETECT_QUICK_SIDE must be a whole number"):
        Detector()


def test_big_image_detected_on_downscaled_copy(detector, quick, astronaut_rgb, astronaut_res):
    k = 2400 / 512
    big = cv2.resize(astronaut_rgb, (2400, 2400), interpolation=cv2.INTER_CUBIC)
    want = (astronaut_res.faces[0].landmarks + 0.5) * k - 0.5
    for det in (detector, quick):
        r = det.detect(encode(big, "JPEG", quality=90), unwrap_size=512)
        assert r.image_size == (2400, 2400)
        # the full scan says it ran on a copy; the quick look is a photo's first step
        assert any("1600x1600 copy of the 2400x2400 image" in n for n in r.notes) == (
            det is detector)
        assert np.abs(r.faces[0].landmarks - want).mean() < 2.0 * k
        assert np.abs(r.aligned.crop_landmarks - astronaut_res.aligned.crop_landmarks
                      ).mean() < 2.0


def test_small_face_in_a_big_photo_found_by_the_full_scan(quick, astronaut_rgb):
    """A face under 1/8 of the longer side: the quick look misses it, the full scan (its
    upsampling) finds it, with the same landmarks as the full scan alone."""
    small = cv2.resize(astronaut_rgb, (192, 192), interpolation=cv2.INTER_AREA)
    canvas = np.full((500, 1000, 3), 200, np.uint8)
    canvas[150:342, 400:592] = small
    r = quick.detect(encode(canvas), unwrap_size=512)
    assert len(r.faces) == 1
    direct = Detector(quick_side=0).detect(encode(canvas), unwrap_size=512)
    np.testing.assert_array_equal(r.faces[0].landmarks, direct.faces[0].landmarks)
    assert r.faces[0].box == direct.faces[0].box
    # the quick look alone (no upsampling, face ~60 px) would not have found it
    rects, scores, _ = hog_detector().run(
        np.ascontiguousarray(cv2.resize(canvas, (640, 320), interpolation=cv2.INTER_AREA)),
        0, quick.min_score)
    assert len(rects) == 0


def test_concurrent_calls_agree(detector, astronaut_rgb, astronaut_res):
    data = encode(astronaut_rgb)
    out, errors = [], []

    def work():
        try:
            out.append(detector.detect(data, unwrap_size=512).faces[0].landmarks)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(out) == 4
    for lm in out:
        np.testing.assert_array_equal(lm, astronaut_res.faces[0].landmarks)


def test_hog_copies_find_what_dlib_finds(two_faces):
    """Each thread's unpickled HOG detector is its own object and finds the same boxes with
    the same scores as dlib's freshly built one."""
    a, b = hog_detector(), hog_detector()
    assert a is not b
    img = np.ascontiguousarray(two_faces)
    want = dlib.get_frontal_face_detector().run(img, 1, 0.0)
    for det in (a, b):
        rects, scores, idx = det.run(img, 1, 0.0)
        assert [(r.left(), r.top(), r.right(), r.bottom()) for r in rects] == \
            [(r.left(), r.top(), r.right(), r.bottom()) for r in want[0]]
        assert list(scores) == list(want[1]) and list(idx) == list(want[2])
    assert len(want[0]) == 2


def test_hog_detector_kept_on_disk(two_faces, tmp_path, monkeypatch):
    """A new process reads dlib's frontal face detector from the cache instead of building
    it (0.23 s of a cold start): same faces, same scores; a damaged file is built again."""
    from services.detector import core

    monkeypatch.setenv("FFHQUV_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(core, "_HOG_STATE", None)
    img = np.ascontiguousarray(two_faces)
    want = dlib.get_frontal_face_detector().run(img, 1, 0.0)
    core.hog_detector()
    (path,) = (tmp_path / "dlib").glob("frontal_face_detector-*.svm")
    assert not list((tmp_path / "dlib").glob(".*.tmp"))

    def no_build():
        raise AssertionError("built again")

    monkeypatch.setattr(core, "_HOG_STATE", None)  # as a new process
    monkeypatch.setattr(core.dlib, "get_frontal_face_detector", no_build)
    rects, scores, idx = core.hog_detector().run(img, 1, 0.0)
    assert [(r.left(), r.top(), r.right(), r.bottom()) for r in rects] == \
        [(r.left(), r.top(), r.right(), r.bottom()) for r in want[0]]
    assert list(scores) == list(want[1]) and list(idx) == list(want[2])
    monkeypatch.undo()
    monkeypatch.setenv("FFHQUV_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(core, "_HOG_STATE", None)
    path.write_bytes(b"damaged")
    assert len(core.hog_detector().run(img, 1, 0.0)[0]) == 2
    assert path.stat().st_size > 1000  # replaced by a good one


# ----------------------------------------------------------------------------- reference photos

@pytest.mark.reference_data
@pytest.mark.parametrize("name", REF_PHOTOS)
def test_landmarks_equal_direct_dlib(detector, quick, ref_dir, name):
    """The default: exactly FFHQ-UV's preprocessing (dlib's HOG, upsampled once below 1000 px,
    then the shape predictor); the quick look lands within 3 % of the eye distance of it."""
    data = (ref_dir / name).read_bytes()
    r = detector.detect(data, unwrap_size=512)
    img = np.asarray(Image.open(ref_dir / name).convert("RGB"))
    hog = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(str(models_directory() / SHAPE_PREDICTOR_FILE))
    up = 1 if max(img.shape[:2]) <= detector.upsample_below else 0
    rects, scores, _ = hog.run(img, up, detector.min_score)
    assert len(rects) == len(r.faces) == 1
    rect = rects[0]
    assert r.faces[0].box == (rect.left(), rect.top(), rect.right(), rect.bottom())
    assert r.faces[0].score == pytest.approx(scores[0])
    want = np.array([[p.x, p.y] for p in sp(img, rect).parts()], np.float32)
    np.testing.assert_array_equal(r.faces[0].landmarks, want)
    q = quick.detect(data, unwrap_size=512)
    assert len(q.faces) == 1
    iod = np.linalg.norm(want[36] - want[45])
    assert np.linalg.norm(q.faces[0].landmarks - want, axis=1).mean() < 0.03 * iod


@pytest.mark.reference_data
@pytest.mark.parametrize("name", REF_PHOTOS)
def test_alignment_close_to_reference_crops(detector, ref_dir, name):
    """Our 224 crop vs the reference pipeline's crop (first tile of processed_vis)."""
    r = detector.detect((ref_dir / name).read_bytes(), unwrap_size=512)
    tile = np.asarray(Image.open(ref_dir / "processed_vis" / (name[:-4] + ".png"))
                      .convert("RGB"))[:, :224]
    ref_faces = detector.find_faces(np.ascontiguousarray(tile))[0]
    ref_lm = detector.landmarks(np.ascontiguousarray(tile), ref_faces[0][0])
    s_ref, _ = align.fit_scale_translation(r.faces[0].landmarks, ref_lm)
    assert r.aligned.image_to_crop[0, 0] / s_ref == pytest.approx(1.0, abs=0.05)
    assert np.linalg.norm(r.aligned.crop_landmarks - ref_lm, axis=1).mean() < 13.0


# ----------------------------------------------------------------------------- alignment

def test_alignment_geometry(astronaut_res):
    a = astronaut_res.aligned
    lm = astronaut_res.faces[0].landmarks
    assert a.crop.shape == (224, 224, 3) and a.crop.dtype == np.uint8
    assert a.crop_hires.shape == (1024, 1024, 3)
    assert a.image_to_crop.shape == (2, 3)
    assert a.image_to_crop[0, 1] == 0 and a.image_to_crop[1, 0] == 0  # no rotation
    assert a.image_to_crop[0, 0] == a.image_to_crop[1, 1]
    np.testing.assert_allclose(a.crop_landmarks, align.transform_points(a.image_to_crop, lm),
                               atol=1e-3)
    five = align.five_points(a.crop_landmarks)
    assert np.abs(five - align.TEMPLATE_224).mean() < 6.0


@pytest.mark.parametrize("size", [512, 1024])
def test_hires_crop_matches_224_crop(detector, astronaut_rgb, size):
    r = detector.detect(encode(astronaut_rgb), unwrap_size=size)
    hires = r.aligned.crop_hires
    assert hires.shape == (size, size, 3)
    down = cv2.resize(hires, (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32)
    diff = np.abs(down - r.aligned.crop.astype(np.float32))
    assert diff.mean() < 3.0, diff.mean()
    # sampled from the photo through the composed affine, not upscaled from the 224 crop
    direct = align.warp_crop(r.image, align.scale_affine(r.aligned.image_to_crop, size), size)
    np.testing.assert_array_equal(hires, direct)
    up = cv2.resize(r.aligned.crop, (size, size), interpolation=cv2.INTER_LINEAR)
    assert np.abs(up.astype(np.float32) - hires).mean() > 0.5


def test_scale_affine_pixel_centres():
    a = np.array([[0.5, 0.0, 10.0], [0.0, 0.5, -3.0]])
    b = align.scale_affine(a, 448)
    # crop pixel i covers hi-res pixels 2i, 2i+1: centre 2i + 0.5
    p = np.array([[7.0, 9.0]])
    np.testing.assert_allclose(align.transform_points(b, p),
                               2 * align.transform_points(a, p) + 0.5)


def test_outside_the_photo_is_grey(detector, astronaut_rgb):
    # face close to the top-left corner: the crop reaches outside the photo
    img = np.ascontiguousarray(astronaut_rgb[40:300, 120:380])
    r = detector.detect(encode(img), unwrap_size=512)
    corner = r.aligned.crop[:3, :3].reshape(-1, 3)
    assert (np.abs(corner.astype(int) - 127) <= 1).all()


# ----------------------------------------------------------------------------- masks, vis

def test_masks(astronaut_res):
    a = astronaut_res.aligned
    assert a.parse_source == "landmarks"
    assert a.skin_mask.shape == a.parse_mask.shape == (224, 224)
    labels = set(np.unique(a.parse_mask).tolist())
    assert {0, 1, 2, 3, 4, 5} <= labels
    lm = np.rint(a.crop_landmarks).astype(int)

    def at(mask, idx):
        return mask[lm[idx, 1], lm[idx, 0]]

    assert at(a.parse_mask, 30) == ParseLabel.NOSE
    assert at(a.parse_mask, 19) == ParseLabel.BROWS
    eye_c = a.crop_landmarks[36:42].mean(0).round().astype(int)
    assert a.parse_mask[eye_c[1], eye_c[0]] == ParseLabel.EYES
    assert a.skin_mask[eye_c[1], eye_c[0]] == 0
    cheek = ((a.crop_landmarks[2] + a.crop_landmarks[31]) / 2).round().astype(int)
    assert a.parse_mask[cheek[1], cheek[0]] == ParseLabel.SKIN
    assert a.skin_mask[cheek[1], cheek[0]] > 200
    # forehead above the brows is skin; the background corner is not
    brow = a.crop_landmarks[19:25].mean(0)
    fh = (brow + np.array([0, -15])).round().astype(int)
    assert a.parse_mask[fh[1], fh[0]] == ParseLabel.SKIN
    assert a.parse_mask[0, 0] == 0
    lips = a.parse_mask == ParseLabel.LIPS
    assert a.skin_mask[lips].max() == 0


def test_visualization(astronaut_res):
    v = astronaut_res.visualization
    assert v.shape == (224, 896, 3) and v.dtype == np.uint8
    np.testing.assert_array_equal(v[:, :224], astronaut_res.aligned.crop)
    np.testing.assert_array_equal(v[:, 224:448, 0], astronaut_res.aligned.skin_mask)


def test_glasses_frames_are_holes_in_the_skin_mask(detector, astronaut_rgb, astronaut_res):
    lm = astronaut_res.faces[0].landmarks
    img = astronaut_rgb.copy()
    frame_pts = []
    for eye in (lm[36:42], lm[42:48]):
        x0, y0 = (eye.min(0) - [6, 8]).astype(int)
        x1, y1 = (eye.max(0) + [6, 10]).astype(int)
        cv2.rectangle(img, (int(x0), int(y0)), (int(x1), int(y1)), (25, 25, 30), 3)
        frame_pts += [((x0 + x1) / 2, y1), (x0, (y0 + y1) / 2), (x1, (y0 + y1) / 2)]
    cv2.line(img, (int(lm[39, 0]) + 6, int(lm[39, 1])), (int(lm[42, 0]) - 6, int(lm[42, 1])),
             (25, 25, 30), 3)
    r = detector.detect(encode(img), unwrap_size=512)
    assert len(r.faces) == 1
    a = r.aligned
    pts = np.rint(align.transform_points(a.image_to_crop, np.array(frame_pts))).astype(int)
    vals = a.skin_mask[pts[:, 1], pts[:, 0]]
    assert (vals < 60).all(), vals
    cheek = ((a.crop_landmarks[2] + a.crop_landmarks[31]) / 2).round().astype(int)
    assert a.skin_mask[cheek[1], cheek[0]] > 200


def test_learned_parser_hook(astronaut_rgb):
    """A parser (BiSeNet later) replaces the landmark polygons and names the source."""
    from services.detector.masks import parse_from_celebamask

    class HalfSkinParser:  # CelebAMask-HQ labels: skin (1) left half, hair (17) right half
        name = "bisenet"

        def __call__(self, crop: np.ndarray) -> np.ndarray:
            out = np.full(crop.shape[:2], 17, np.uint8)
            out[:, :112] = 1
            return parse_from_celebamask(out)

    det = Detector(parser=HalfSkinParser())
    r = det.detect(encode(astronaut_rgb), unwrap_size=512)
    assert r.aligned.parse_source == "bisenet"
    assert (r.aligned.parse_mask[:, :112] == ParseLabel.SKIN).all()
    assert (r.aligned.parse_mask[:, 112:] == ParseLabel.BACKGROUND).all()
    np.testing.assert_array_equal(parse_from_celebamask(np.arange(19)),
                                  [0, 1, 2, 2, 3, 3, 0, 0, 0, 0, 4, 6, 5, 5, 0, 0, 0, 0, 0])


def test_missing_cnn_model_is_unavailable_not_a_crash(tmp_path, astronaut_rgb):
    from ffhquv.errors import BackendUnavailable

    (tmp_path / SHAPE_PREDICTOR_FILE).symlink_to(models_directory() / SHAPE_PREDICTOR_FILE)
    det = Detector(models_dir=tmp_path)
    assert len(det.detect(encode(astronaut_rgb), unwrap_size=512).faces) == 1  # HOG works
    with pytest.raises(BackendUnavailable, match=r"CNN face detector unavailable: dlib model "
                                                 r"file missing: .*mmod_human_face_detector"):
        det.detect(encode(astronaut_rgb), backend="cnn")


def test_landmark_model_is_configurable(tmp_path, monkeypatch):
    """FFHQUV_LANDMARK_MODEL / landmark_model= replace the shipped 68-point model (e.g. with a
    commercially licensed one); a missing file is named with its path."""
    from services.detector.core import landmark_model_path

    shipped = models_directory() / SHAPE_PREDICTOR_FILE
    monkeypatch.delenv("FFHQUV_LANDMARK_MODEL", raising=False)
    assert landmark_model_path() == shipped
    own = tmp_path / "licensed_68.dat"
    own.symlink_to(shipped)
    monkeypatch.setenv("FFHQUV_LANDMARK_MODEL", str(own))
    assert Detector("hog").landmark_model == own
    missing = tmp_path / "missing.dat"
    with pytest.raises(FileNotFoundError, match=f"landmark model missing: {missing}"):
        Detector("hog", landmark_model=missing)


def test_cut_off_face_gets_a_warning(detector, astronaut_rgb, astronaut_res):
    """The photo cut through the mouth: the chin's landmarks fall outside, and the result says
    so; the whole face gets no such note."""
    assert not any(n.startswith("partial face") for n in astronaut_res.notes)
    lm = astronaut_res.faces[astronaut_res.selected_index].landmarks
    cut = int(lm[:, 1].min() + 0.8 * (lm[:, 1].max() - lm[:, 1].min()))
    res = detector.detect(encode(np.ascontiguousarray(astronaut_rgb[:cut])))
    notes = [n for n in res.notes if n.startswith("partial face")]
    assert notes and "bottom edge" in notes[0]
