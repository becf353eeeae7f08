"""Calibration: measure operators on a real GPU (``measure_gpu``) and fit the cost model's
efficiency factors to the measurements (``fit``)."""
