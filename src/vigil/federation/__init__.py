"""Federated training of the sepsis model: no patient row leaves a site.

Modules (import them directly; this package imports nothing, so that
``import vigil.federation`` stays free of torch):

- :mod:`.strategies`: FedAvg, FedProx, FedBN, robust aggregation (pure numpy);
- :mod:`.checks`: bad-update control before aggregation;
- :mod:`.messages`: what a site sends (weights, counts, aggregate statistics);
- :mod:`.site`: a hospital's ``fit`` and ``evaluate``;
- :mod:`.driver`: the in-process round loop (dropouts, ``min_sites``, history);
- :mod:`.privacy`: DP-SGD per site with Opacus and an RDP accountant;
- :mod:`.boosting`, :mod:`.hybrid`: boosted trees grown from summed site
  histograms after the rounds, and their fusion with the network;
- :mod:`.evaluation`, :mod:`.profile`: pooled validation metrics and the drift
  reference profile, from site histograms;
- :mod:`.history`: the round history saved in the package;
- :mod:`.simulation`: ``vigil federate`` end to end; :mod:`.integrity`:
  ``vigil package verify``;
- :mod:`.model`, :mod:`.training`, :mod:`.export`, :mod:`.centralized`: the
  network, its training loop, ONNX export, the centralized reference.
"""

__all__: list[str] = []
