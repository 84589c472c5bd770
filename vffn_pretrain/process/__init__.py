"""Process-level pieces shared by every command: exit codes and one-line exits (`exits`), how a tool stops on a
signal (`interrupts`), helper processes that end with their parent (`lifetime`), CPU threads per rank
(`threads`)."""
