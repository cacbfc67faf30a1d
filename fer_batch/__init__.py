"""fer-batch: facial emotion tables for image and video archives, on Ray.

Importing the package does nothing but define names; Ray, TensorFlow and OpenCV are
imported inside the functions and actors that need them.
"""

__version__ = "0.1.0"
