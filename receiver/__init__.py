"""The webhook receiver: signed vendor events in, staged in the store before the answer.

`app` serves /hooks/<adapter name> on Starlette and uvicorn, with the request limits;
`staging` writes each accepted request's opt-outs in one transaction under the same rules as
a polled page; one module per vendor verifies a request and maps its events, reusing that
vendor adapter's own mapping so a pushed opt-out is recorded exactly like a polled one.
Everything here is imported only when `[webhooks] listen` is set (or by `check`).
"""
