"""RunError: the run cannot go on for a reason outside the config (the run_dir is locked by another trainer, ...).
`vffn-pretrain` prints its message as one line and exits with `exit_code`."""


class RunError(RuntimeError):
    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code
