"""ffhq-uv: one face photo in, a textured 3D head out (FFHQ-UV RGB fitting as gRPC services)."""

__version__ = "0.1.0"
