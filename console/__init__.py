"""The web console and HTTP API of flowctl (``flowctl ui``, ``run --ui``, ``dev --ui``).

* :mod:`console.api`: the FastAPI application (JSON, OpenAPI at ``/openapi.json``);
* :mod:`console.auth`: who may do what (read-only unless control is allowed, bearer token);
* :mod:`console.events`: server-sent events (KV changes, stored logs), from NATS watches;
* :mod:`console.graph`: the flow's graph laid out for drawing (pure);
* :mod:`console.server`: serving it with uvicorn on the caller's event loop;
* ``static/``: the single-page console (plain HTML, CSS and JavaScript: no build step).

Dependencies: ``console → flowengine → flowstore``; the CLI starts it; nothing imports
``cli``.
"""
