"""Face models behind one interface (:class:`FaceModel`); :func:`load_face_model` picks one."""

from services.fitter.facemodel.base import FaceModel, vertex_normals

__all__ = ["FaceModel", "vertex_normals"]
