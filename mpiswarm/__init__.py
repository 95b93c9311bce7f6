"""mpiswarm: prompts to many vLLM endpoints with MPI, answers into one ordered HDF5 file."""
__version__ = "0.1.0"
