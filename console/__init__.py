"""The web console and HTTP API of flowctl (``flowctl ui``, ``run --ui``, ``dev --ui``).

* :mod:`console.api`: the FastAPI application (JSON, OpenAPI at ``/openapi.json``);
* :mod:`console.auth`: who may do what (read-only unless control is allowed, bearer token);
* :mod:`console.events`: server-sent events (KV changes, stored logs), from NATS watches;
* :mod:`console.graph`: the flow's graph laid out for drawing (pure);
* :mod:`console.series`: the last minutes of each flow's figures, for the charts (pure);
* :mod:`console.server`: serving it with uvicorn on the caller's event loop;
* ``static/``: the single-page console (plain HTML, CSS and JavaScript ES modules: no
  build step): ``app.js`` routes, ``api.js`` talks to the API, ``flow.js`` the flow page
  (``graph.js``, ``charts.js``, ``dlq.js``), ``pages.js`` the flow list and agents;
  ``uplot.*`` is uPlot 1.6.32 from npm, vendored as published (MIT, ``uplot.LICENSE``).

Dependencies: ``console → flowengine → flowstore``; the CLI starts it; nothing imports
``cli``.
"""
