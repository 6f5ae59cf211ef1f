"""musiclit: fine-tune MusicGen on your own music collection, from a 12 GB GPU to rented cloud GPUs."""

__version__ = "0.1.0"
