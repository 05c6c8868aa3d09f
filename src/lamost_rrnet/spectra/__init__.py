"""LAMOST MRS spectra: reading and writing files, preprocessing, RV estimation, and the spectral
synthesis of model spectra that the RV templates and the simulator use."""
