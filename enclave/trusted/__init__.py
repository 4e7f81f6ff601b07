"""Code that runs inside the emulated enclave; every file here is measured into MRENCLAVE."""
