"""Rendering a triangle mesh with a camera: the base layer's renderer, shared by the fitter
(fitting, texture unwrap, face-model build) and the exporter (previews).

One concept a module; import the one you need (this package itself imports nothing, so
``import ffhquv.render`` does not import torch; every module below does):

* :mod:`ffhquv.render.camera`: the shared perspective camera (:class:`Camera`), model -> world
  -> camera -> pixel -> clip frames, projection.
* :mod:`ffhquv.render.sh`: spherical-harmonics (3 bands) Lambertian shading.
* :mod:`ffhquv.render.raster`: rasteriser backends behind one interface with
  ``nvdiffrast.torch`` semantics (:class:`RasterBackend`, :func:`get_backend`: the pure-torch
  rasteriser on any device, nvdiffrast on CUDA).
* :mod:`ffhquv.render.renderer`: mesh rendering on a backend (:class:`MeshRenderer`, textured /
  vertex colour, SH-lit, UV-space rasterisation, the sliver gradient gate, vertex normals,
  :func:`render_preview`); the one place that converts OBJ uv (v up) to texture memory.
* :mod:`ffhquv.render.shapes`: small procedural meshes for tests, benchmarks and previews.

What is specific to fitting (losses, step loops and CUDA graphs, stages) stays in
``services/fitter/``.
"""
