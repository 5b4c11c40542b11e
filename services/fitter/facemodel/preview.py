"""Preview renders of a face model (mean head, random identities and expressions, UV layout,
landmarks, masks) for people to look at; ``ffhquv build-model --preview DIR`` writes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from services.fitter.facemodel.base import FaceModel

SKIN = (0.80, 0.62, 0.52)
YAWS = (0.0, 45.0, 90.0)


def preview_camera():
    """The fitting camera zoomed out (focal x 0.8) so the whole head shows."""
    from ffhquv.render.camera import Camera

    return Camera(focal=Camera().focal * 0.8)


def _albedo(model: FaceModel) -> torch.Tensor:
    """``[N, 3]``: skin colour, non-skin vertices (lips, brows, lid margins, mouth) darker."""
    a = torch.tensor(SKIN).repeat(model.n_vertices, 1)
    a[~model.skin_mask.cpu()] = torch.tensor([0.62, 0.40, 0.38])
    return a


def _render(model: FaceModel, v: torch.Tensor, yaw: float, size: int,
            albedo: torch.Tensor | None = None) -> np.ndarray:
    from ffhquv.render.renderer import PreviewOptions, Surface, render_preview

    return render_preview(v, model.tri,
                          Surface(vertex_albedo=_albedo(model) if albedo is None else albedo),
                          PreviewOptions(yaw_deg=yaw, size=size, camera=preview_camera()))


def sample_heads(model: FaceModel, seed: int = 0) -> list[tuple[str, torch.Tensor]]:
    """Named ``[N, 3]`` shapes: the mean, three N(0, 1) identities, three expressions."""
    g = torch.Generator().manual_seed(seed)
    z_id = torch.zeros(1, model.id_dim)
    out = [("mean", model.shape(z_id)[0])]
    for k in range(3):
        out.append((f"identity {k}", model.shape(torch.randn(1, model.id_dim, generator=g))[0]))
    labels = list(model.exp_labels)

    def expr(**kw):
        e = torch.zeros(1, model.exp_dim)
        for name, val in kw.items():
            if name in labels:
                e[0, labels.index(name)] = val
        return e

    out.append(("jawOpen+browInnerUp", model.shape(z_id, expr(jawOpen=0.7, browInnerUp=0.8))[0]))
    out.append(("smile", model.shape(z_id, expr(mouthSmileLeft=1.0, mouthSmileRight=1.0,
                                                 cheekSquintLeft=0.5, cheekSquintRight=0.5))[0]))
    e = torch.rand(1, model.exp_dim, generator=g) * 0.5 * (torch.rand(1, model.exp_dim,
                                                                       generator=g) < 0.2)
    out.append(("random expression",
                model.shape(torch.randn(1, model.id_dim, generator=g), e)[0]))
    return out


def uv_layout_image(model: FaceModel, size: int = 512) -> np.ndarray:
    """``uint8 [size, size, 3]`` the UV triangles (face region blue, rest grey), row 0 = v 1."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (size, size), (255, 255, 255))
    dr = ImageDraw.Draw(im)
    uv = model.uv.cpu().numpy()
    ut = model.uv_tri.cpu().numpy()
    face = model.face_tri_mask.cpu().numpy()
    for t, f in zip(ut, face, strict=True):
        p = [(float(u * size), float((1 - v) * size)) for u, v in uv[t]]
        dr.polygon(p, fill=(170, 190, 240) if f else (215, 215, 215), outline=(90, 90, 90))
    return np.asarray(im)


def write_previews(model: FaceModel, out: Path, size: int = 384) -> Path:
    """Render previews into ``out`` (created): one PNG per head and view, ``uv_layout.png``,
    ``landmarks.png``, ``face_region.png`` and a small ``contact_sheet.png`` (< 300 KB).

    Returns:
        the contact sheet path.
    """
    from PIL import Image, ImageDraw

    from ffhquv.render.camera import project

    out.mkdir(parents=True, exist_ok=True)
    heads = sample_heads(model)
    tiles = []
    for name, v in heads:
        row = []
        for yaw in YAWS:
            img = _render(model, v, yaw, size)
            Image.fromarray(img).save(out / f"{name.replace(' ', '_').replace('+', '_')}"
                                            f"_yaw{int(yaw)}.png")
            row.append(img)
        tiles.append((name, row))
    # landmarks on the frontal mean render (render_preview turns about the centroid; yaw 0 is
    # the plain camera view)
    mean = model.mean_shape.cpu()
    img = Image.fromarray(_render(model, mean, 0.0, size))
    pix = project(model.landmarks(mean[None]), preview_camera().scaled(size))[0].numpy()
    dr = ImageDraw.Draw(img)
    for x, y in pix:
        dr.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(255, 0, 0))
    img.save(out / "landmarks.png")
    lm_img = np.asarray(img)
    # face region (photometric loss) in blue
    alb = _albedo(model)
    fv = torch.zeros(model.n_vertices, dtype=torch.bool)
    fv[model.tri[model.face_tri_mask.cpu()].reshape(-1).cpu()] = True
    alb[fv] = torch.tensor([0.45, 0.55, 0.85])
    face_img = np.concatenate([_render(model, mean, y, size, alb) for y in (0.0, 60.0)], 1)
    Image.fromarray(face_img).save(out / "face_region.png")
    uv_img = uv_layout_image(model, 1024)
    Image.fromarray(uv_img).save(out / "uv_layout.png")

    # contact sheet: rows of (front, 45, profile) + a last row (landmarks, face region, UV)
    t = 200
    rows = [[Image.fromarray(i).resize((t, t), Image.LANCZOS) for i in r] for _, r in tiles]
    rows.append([Image.fromarray(lm_img).resize((t, t), Image.LANCZOS),
                 Image.fromarray(face_img[:, :size]).resize((t, t), Image.LANCZOS),
                 Image.fromarray(uv_img).resize((t, t), Image.LANCZOS)])
    names = [n for n, _ in tiles] + ["landmarks / face region / UV"]
    per_line = 2  # two heads (6 tiles) per sheet line
    lines = [(rows[i:i + per_line], names[i:i + per_line]) for i in range(0, len(rows), per_line)]
    label_h = 14
    sheet = Image.new("RGB", (per_line * 3 * t, len(lines) * (t + label_h)), (255, 255, 255))
    dr = ImageDraw.Draw(sheet)
    for li, (rr, nn) in enumerate(lines):
        y0 = li * (t + label_h)
        for hi, (r, n) in enumerate(zip(rr, nn, strict=True)):
            x0 = hi * 3 * t
            dr.text((x0 + 4, y0 + 1), n, fill=(0, 0, 0))
            for ci, tile in enumerate(r):
                sheet.paste(tile, (x0 + ci * t, y0 + label_h))
    path = out / "contact_sheet.png"
    sheet.quantize(colors=192, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path
