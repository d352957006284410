"""minivae: a Variational Autoencoder with hand-derived backprop in NumPy."""
__version__ = "0.1.0"
