"""The Airflow UI plugin: Flow tabs on task instances, runs and DAGs, and flow tasks' links.

Registered by the provider itself (``plugins`` in its provider info): the API server mounts
:mod:`provider.ui.app` under ``/flowtask`` and shows its pages as tabs. Everything shown is
read through :mod:`provider.client` from the store's index and manifests, and the previews
and cards the runtime made (:mod:`provider.runtime.views`); nothing is unpickled here.
"""
