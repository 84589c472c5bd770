"""Stop signals, at every phase of a run.

SIGTERM / SIGUSR1 are what SLURM sends before preemption or the time limit (SIGUSR2 is submitit's); SIGINT is
Ctrl-C; SIGHUP is a closed terminal (left alone when the trainer was started under `nohup`, which ignores it).
`STOP` records the first one, and what happens depends on the phase it arrives in:

| phase                                  | outcome                                                             |
|----------------------------------------|---------------------------------------------------------------------|
| start-up (imports, config, joining the process group) | stop at once                         |
| set-up (run directory, data, model, checkpoint loading) | stop when the current set-up step ends, every rank together |
| training, saving a checkpoint          | finish the step or the save, save, stop                             |
| evaluation                             | abandon it at the next validation batch, save, stop                 |
| finishing (the summary), after the end | a line; the run's own exit code stands                              |
| after an error (on its way out)        | a line, the error's exit code stands; Ctrl-C aborts at once (130)   |

A stop before training (the first two rows) has nothing new to save: the last checkpoint, if any, is intact.
Every stop exits with EXIT_REQUEUE (3: the same command resumes; the launchers requeue under SLURM), except a
Ctrl-C before training began, which exits EXIT_INTERRUPTED (130). A second Ctrl-C aborts at once (130) in any
phase: a save cut short leaves only a temporary directory, the last complete checkpoint is intact. A second
SIGTERM is ignored (torchrun sends one to every rank when another rank exits 3).
"""

from __future__ import annotations

import os
import signal
import sys
import threading

EXIT_REQUEUE = 3
EXIT_INTERRUPTED = 130

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT, signal.SIGHUP)

# Phases (StopSignals.phase): a stop is immediate in START_UP, deferred to a phase boundary in the others.
START_UP = "start-up"
TRAINING = "training"
FINISHING = "finishing"  # the summary is being written: the outcome is decided
ENDED = "after the run ended"
FAILED = "after the run failed"  # an error is on its way out: nothing can be saved any more


def say(text: str) -> None:
    """One line to stderr; a closed or full stream (after SIGHUP, a full disk) is not an error here."""
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


class StoppedBeforeTraining(BaseException):
    """A stop signal arrived before training began: nothing new to save. A BaseException (like
    KeyboardInterrupt), so that no `except Exception` on the way takes it for a failure of its own."""

    def __init__(self, signal_name: str, phase: str):
        super().__init__(signal_name, phase)
        self.signal_name, self.phase = signal_name, phase

    @property
    def exit_code(self) -> int:
        return EXIT_INTERRUPTED if self.signal_name == "SIGINT" else EXIT_REQUEUE

    def message(self) -> str:
        then = ("exiting with 130 (interrupted)" if self.exit_code == EXIT_INTERRUPTED
                else f"exiting with {EXIT_REQUEUE} (requeue: the same command starts again)")
        return (f"{self.signal_name} during {self.phase}: stopped before training; nothing new to save (the last "
                f"checkpoint, if any, is intact); {then}")


class StopSignals:
    """The process's stop-signal handler (`STOP`). `install()` it once (main thread); the trainer sets `phase`
    and `immediate`, and polls `requested` at its phase boundaries."""

    def __init__(self):
        self.signal_name: str | None = None  # the first stop signal
        self.arrived_in: str | None = None  # the phase it arrived in
        self.phase = START_UP
        self.immediate = True  # raise StoppedBeforeTraining from the handler (no process group yet)
        self._previous: dict = {}

    @property
    def installed(self) -> bool:
        return bool(self._previous)

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def install(self) -> bool:
        """Handle the stop signals from now on; False if already installed or not in the main thread (signal
        handlers can only be set there)."""
        if self.installed or threading.current_thread() is not threading.main_thread():
            return False
        for sig in STOP_SIGNALS:
            if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
                continue  # started under nohup: the user asked to survive a closed terminal
            self._previous[sig] = signal.signal(sig, self._handle)
        return True

    def _ignore_in_forked_child(self) -> None:
        """A child forked while the handler is installed (megatron-core's checkpoint writers) leaves the stop
        signals to this process, which ends it (`lifetime`): no second "saving a checkpoint" line from it."""
        if self.installed:
            for sig in self._previous:
                signal.signal(sig, signal.SIG_IGN)
            self._previous = {}

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def start_run(self) -> None:
        """A new run in this process (in-process tests train several): forget an earlier run's signal."""
        self.signal_name = self.arrived_in = None
        self.phase, self.immediate = START_UP, True

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGINT and self.phase == FAILED:  # nothing is left to save: whoever waits may go
            say("SIGINT after the run failed: aborting")
            os._exit(EXIT_INTERRUPTED)
        if self.phase in (FINISHING, ENDED, FAILED):
            say(f"{name} received {'while finishing' if self.phase == FINISHING else self.phase}; the run's exit "
                "code stands")
            return
        if self.signal_name is None:
            self.signal_name, self.arrived_in = name, self.phase
            if self.immediate:
                raise StoppedBeforeTraining(name, self.phase)
            then = ("saving a checkpoint at the end of this step, then exiting" if self.phase == TRAINING
                    else "stopping when this phase allows, then exiting")
            again = " (Ctrl-C again to abort without saving)" if signum == signal.SIGINT else ""
            say(f"\n{name} during {self.phase}: {then}{again}")
        elif signum == signal.SIGINT:
            say("second SIGINT: aborting without saving")
            os._exit(EXIT_INTERRUPTED)


STOP = StopSignals()
os.register_at_fork(after_in_child=STOP._ignore_in_forked_child)


def ignore_stop_signals() -> None:
    """For helper processes of the trainer (megatron-core's checkpoint-writer manager): SLURM sends SIGTERM or
    SIGUSR1 to every process of a job step, and a terminal sends Ctrl-C to its whole foreground group. The trainer
    saves on them; a helper that died of them would fail that very save. Helpers exit with the trainer anyway
    (`vffn_pretrain.process.lifetime`)."""
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
