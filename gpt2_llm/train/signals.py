"""Ctrl-C and SIGTERM during training: finish the step, save, stop; a second one aborts at once."""
import signal
import sys
import threading


class GracefulStop:
    """Turn the first SIGINT/SIGTERM into a request to stop after the current step; a second one aborts.

        with GracefulStop() as stop:
            while stop.signal_number is None: ...   # one more step
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        self.signal_number = None
        self.previous = {}
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self.previous = {s: signal.signal(s, self.handle) for s in self.SIGNALS}
        return self

    def handle(self, signal_number, frame):
        if self.signal_number is not None:
            raise KeyboardInterrupt  # asked twice: stop now (an atomic save in flight leaves the old file)
        self.signal_number = signal_number
        print("\nStopping after this step and saving (press Ctrl-C again to abort)", file=sys.stderr)

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
