"""Vendor fakes for tests: stateful objects with `handle(request) -> response`, written from ../shared/specs/.

Use them through `httpx.MockTransport(fake.handle)` in-process, or over a real
socket with `tests.fakes.serve.serve(fake.handle)` for end-to-end tests.
"""
