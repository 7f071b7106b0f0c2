"""An injected clock for unit tests: time moves only when the test moves it."""


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now
