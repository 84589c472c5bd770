"""Process-level pieces shared by every command: exit codes and one-line exits (`exits`), helper processes
that end with their parent (`lifetime`)."""
