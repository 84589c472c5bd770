"""Writing a tool's outputs safely, the same way in every command: never over what the command reads
(`apart`), one writer at a time (`lock`), whole or not at all, with the user's permissions (`atomic`)."""
