"""The face-model interface shared by the ``default`` (anny) and ``hifi3dpp`` models.

Both are linear morphable models in the *model* frame of :mod:`ffhquv.render.camera`
(y up, face toward +z, HiFi3D++-like units, about decimetres):

    shape(id, exp) = mean_shape + id_base . id + exp_base . exp        # [B, N, 3]

Coefficients are scaled so that a standard normal draw is a plausible face (the prior is
``N(0, I)``), which keeps regularisation weights comparable across models.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ffhquv.bykeep import KeptByIdentity
from ffhquv.render.renderer import vertex_normals

#: read-only host copies of model tensors, by the tensor and what was made of it (a model's
#: tensors are not modified after it is built or loaded, :meth:`FaceModel.to` makes new ones);
#: the 32 most recent
_HOST: KeptByIdentity[np.ndarray] = KeptByIdentity(32)


def host_once(t: Tensor, what: Hashable, make) -> np.ndarray:
    """``make(t)`` as a read-only numpy array, made once per tensor and ``what`` (the same
    array every call: each ``.cpu()`` of a model tensor was a device wait and a copy a
    photo, and a mesh's proto reuses what it has built for the same arrays,
    :meth:`ffhquv.mesh.MeshData.to_proto`)."""
    def build() -> np.ndarray:
        arr = np.array(make(t))
        arr.flags.writeable = False
        return arr

    return _HOST.get((t,), what, build)


@dataclass
class FaceModel:
    """A linear head model. All tensors live on one device; integer tensors are ``long``.

    Attributes:
        name: "default" or "hifi3dpp".
        unit: human-readable unit of the model space.
        mean_shape: ``[N, 3]`` mean vertex positions.
        id_base: ``[N, 3, K_id]`` identity basis (unit-variance coefficients).
        exp_base: ``[N, 3, K_exp]`` expression basis.
        tri: ``[T, 3]`` triangles of the whole head (vertex indices, counter-clockwise seen
            from outside).
        uv: ``[M, 2]`` texture coordinates, OBJ convention (v up), in [0, 1].
        uv_tri: ``[T, 3]`` per-corner indices into ``uv``, aligned with ``tri``.
        lmk_tri_vertices: ``[68, 3]`` vertex ids of the triangle holding each iBUG landmark.
        lmk_bary: ``[68, 3]`` barycentric weights of each landmark in that triangle.
        face_tri_mask: ``[T]`` bool, triangles of the fitted face region (photometric loss).
        skin_mask: ``[N]`` bool, skin vertices (no eyes, brows, lips, mouth interior).
        mirror: ``[N]`` index of each vertex's left/right mirror vertex.
        eye_ring_left: ``[R_l]`` vertex ids around the subject's left eye opening.
        eye_ring_right: ``[R_r]`` vertex ids around the subject's right eye opening.
        mean_tex: optional ``[N, 3]`` mean per-vertex albedo in [0, 1].
        tex_base: optional ``[N, 3, K_tex]`` per-vertex albedo basis.
        id_labels / exp_labels: optional names of the coefficients.
        meta: free-form provenance (builder version, source package versions).
    """

    name: str
    unit: str
    mean_shape: Tensor
    id_base: Tensor
    exp_base: Tensor
    tri: Tensor
    uv: Tensor
    uv_tri: Tensor
    lmk_tri_vertices: Tensor
    lmk_bary: Tensor
    face_tri_mask: Tensor
    skin_mask: Tensor
    mirror: Tensor
    eye_ring_left: Tensor
    eye_ring_right: Tensor
    mean_tex: Tensor | None = None
    tex_base: Tensor | None = None
    id_labels: list[str] = field(default_factory=list)
    exp_labels: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def n_vertices(self) -> int:
        return int(self.mean_shape.shape[0])

    @property
    def id_dim(self) -> int:
        return int(self.id_base.shape[-1])

    @property
    def exp_dim(self) -> int:
        return int(self.exp_base.shape[-1])

    @property
    def tex_dim(self) -> int:
        return 0 if self.tex_base is None else int(self.tex_base.shape[-1])

    @property
    def device(self) -> torch.device:
        return self.mean_shape.device

    @property
    def metres_per_unit(self) -> float:
        """Metres per model-space unit: the default model's build scale (anny is in metres),
        0.1 otherwise (HiFi3D++ units: its inter-ocular distance 0.663 is about 66 mm)."""
        scale = (self.meta.get("anny_to_model") or {}).get("scale")
        return 1.0 / float(scale) if scale else 0.1

    def expression_names(self) -> list[str]:
        """``K_exp`` names of the expression coefficients (the default model's are the 52 ARKit
        blendshapes ``browDownLeft`` ... ``tongueOut``; ``exp00`` ... when the model has none)."""
        if len(self.exp_labels) == self.exp_dim:
            return list(self.exp_labels)
        return [f"exp{k:02d}" for k in range(self.exp_dim)]

    def morph_targets(self, exp_coeff: np.ndarray, tol: float = 1e-6):
        """The expression basis as morph targets of the neutral head.

        Args:
            exp_coeff: ``[K_exp]`` fitted expression coefficients (the targets' weights).
            tol: offsets with ``|d| <= tol`` model units (float noise of the basis) become 0,
                so a target lists only the vertices it moves.
        Returns:
            :class:`ffhquv.mesh.MorphTargets`: names, ``offsets [K_exp, N, 3]`` float32 (the
            basis columns; read-only, the same array on every call), ``weights [K_exp]``;
            ``neutral + weights . offsets`` is the expression shape.
        """
        from ffhquv.mesh import MorphTargets

        def make(base: Tensor) -> np.ndarray:
            off = base.detach().cpu().numpy().transpose(2, 0, 1).astype(np.float32)
            off[np.abs(off) <= tol] = 0.0
            return off

        # the offsets are the model's: one read-only array for every photo
        off = host_once(self.exp_base, ("morph_offsets", float(tol)), make)
        return MorphTargets(names=self.expression_names(), offsets=off,
                            weights=np.asarray(exp_coeff, np.float32).reshape(-1))

    def named_coefficients(self, coeffs: dict[str, np.ndarray]) -> dict:
        """The ``stage3_coeffs.json`` content: every coefficient under its name.

        Args:
            coeffs: ``id [K_id]``, ``exp [K_exp]``, ``angles [3]``, ``gamma [27]``,
                ``trans [3]`` (one photo, numpy).
        Returns:
            A JSON-ready dict: ``expression`` {ARKit name: weight}, ``identity`` {name: value},
            ``angles_rad`` / ``translation`` {x, y, z}, ``gamma`` [27], the unit, and which
            expression weights fall outside the ARKit range [0, 1] with what that means.
        """
        exp = np.asarray(coeffs["exp"], np.float64).reshape(-1)
        names = self.expression_names()
        ids = (list(self.id_labels) if len(self.id_labels) == self.id_dim
               else [f"id{k:03d}" for k in range(self.id_dim)])
        xyz = lambda a: dict(zip("xyz", np.asarray(a, float).reshape(-1).tolist(), strict=True))  # noqa: E731
        outside = {n: float(w) for n, w in zip(names, exp, strict=True) if not 0.0 <= w <= 1.0}
        return {
            "face_model": self.name,
            "unit": self.unit,
            "metres_per_unit": self.metres_per_unit,
            "expression": {n: float(w) for n, w in zip(names, exp, strict=True)},
            "expression_outside_0_1": outside,
            "expression_note": (
                "Expression weights of the face model's blend shapes (for the default model "
                "the 52 ARKit blendshapes: 0 = neutral, 1 = the full expression). The fit "
                "keeps them unconstrained (Gaussian prior) and these are the exact fitted "
                "values: neutral + sum(weight * target) is stage3_mesh_exp.obj and the GLB's "
                "default morph weights. A weight outside [0, 1] extrapolates the target "
                "linearly (below 0: the opposite motion); clamp to [0, 1] when driving an "
                "ARKit rig that accepts only that range."),
            "identity": {n: float(v) for n, v in
                         zip(ids, np.asarray(coeffs["id"]).reshape(-1), strict=True)},
            "angles_rad": xyz(coeffs["angles"]),
            "translation": xyz(coeffs["trans"]),
            "gamma": np.asarray(coeffs["gamma"], float).reshape(-1).tolist(),
        }

    # -- geometry --------------------------------------------------------------------------------
    def shape(self, id_coeff: Tensor, exp_coeff: Tensor | None = None) -> Tensor:
        """Vertices for coefficients.

        Args:
            id_coeff: ``[B, K_id]``.
            exp_coeff: ``[B, K_exp]`` or None for the neutral (identity-only) shape.
        Returns:
            ``[B, N, 3]`` model-space vertices. Differentiable in both coefficient sets.
        """
        v = self.mean_shape[None] + torch.einsum("nck,bk->bnc", self.id_base, id_coeff)
        if exp_coeff is not None:
            v = v + torch.einsum("nck,bk->bnc", self.exp_base, exp_coeff)
        return v

    def neutral(self, id_coeff: Tensor) -> Tensor:
        """``[B, N, 3]`` identity-only shape (expression ignored by construction)."""
        return self.shape(id_coeff, None)

    def landmarks(self, vertices: Tensor) -> Tensor:
        """``[B, N, 3]`` vertices to ``[B, 68, 3]`` iBUG landmark positions (barycentric)."""
        tri_v = vertices[:, self.lmk_tri_vertices]  # [B, 68, 3, 3]
        return (tri_v * self.lmk_bary[None, :, :, None]).sum(2)

    def vertex_normals(self, vertices: Tensor) -> Tensor:
        """``[B, N, 3]`` area-weighted unit vertex normals (outward for CCW triangles)."""
        return vertex_normals(vertices, self.tri)

    def albedo(self, tex_coeff: Tensor | None = None) -> Tensor | None:
        """``[B, N, 3]`` per-vertex albedo from the texture basis, or None without one."""
        if self.mean_tex is None:
            return None
        if tex_coeff is None or self.tex_base is None:
            return self.mean_tex[None]
        return self.mean_tex[None] + torch.einsum("nck,bk->bnc", self.tex_base, tex_coeff)

    def zeros(self, batch: int = 1) -> dict[str, Tensor]:
        """Zero coefficients: ``id [B,K_id]``, ``exp [B,K_exp]``, ``angles [B,3]``,
        ``gamma [B,27]``, ``trans [B,3]``."""
        z = lambda n: torch.zeros(batch, n, device=self.device)  # noqa: E731
        return {"id": z(self.id_dim), "exp": z(self.exp_dim), "angles": z(3), "gamma": z(27),
                "trans": z(3)}

    # -- persistence -----------------------------------------------------------------------------
    def to(self, device: torch.device | str) -> FaceModel:
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            kw[f.name] = v.to(device) if isinstance(v, Tensor) else v
        return FaceModel(**kw)

    def save(self, path: Path) -> None:
        """Write an ``.npz`` (tensors as arrays, strings / dicts as JSON), atomically."""
        import json
        import os
        import tempfile

        arrays: dict[str, np.ndarray] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                arrays[f.name] = v.detach().cpu().numpy()
            elif v is not None:
                arrays[f.name] = np.array(json.dumps(v))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        os.close(fd)
        try:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **arrays)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @classmethod
    def load(cls, path: Path, device: torch.device | str = "cpu") -> FaceModel:
        import json

        data = np.load(path, allow_pickle=False)
        kw = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            a = data[f.name]
            if a.dtype.kind in "US":
                kw[f.name] = json.loads(str(a))
            elif a.dtype.kind in "iu":
                kw[f.name] = torch.from_numpy(a.astype(np.int64)).to(device)
            elif a.dtype.kind == "b":
                kw[f.name] = torch.from_numpy(a).to(device)
            else:
                kw[f.name] = torch.from_numpy(a.astype(np.float32)).to(device)
        return cls(**kw)

