"""Exit codes of ``mpiswarm run`` (documented in the README), the same on every rank."""

EXIT_OK = 0  # every prompt answered
EXIT_ABORTED = 1  # an unexpected error on some rank aborted the job (MPI_Abort)
EXIT_USAGE = 2  # usage or input error: nothing sent, no output file
EXIT_PROMPTS_FAILED = 3  # finished; some prompts failed, each with its error
EXIT_ENDPOINT_DOWN = 4  # an endpoint never became healthy or does not serve --model: nothing sent, no output file
EXIT_RESUME = 75  # interrupted (signal, --time-limit, every endpoint down): run the same command to resume
