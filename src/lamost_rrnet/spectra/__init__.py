"""LAMOST MRS spectra: reading and writing files, preprocessing, RV estimation."""
