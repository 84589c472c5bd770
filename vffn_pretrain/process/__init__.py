"""Process-level pieces shared by every command: how a tool stops on a signal (`interrupts`)."""
