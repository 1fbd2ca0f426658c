"""Device, precision and distribution, each behind one small object."""
