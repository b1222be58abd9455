"""The LAMMPS side: opening LAMMPS from Python (:mod:`.session`), the plugin and its entry point
(:mod:`.plugin`), reference data from LAMMPS potentials (:mod:`.sampling`, :mod:`.labelling`),
and the records of MD runs with their reweighting to the ensemble members (:mod:`.reweight`).

Nothing heavy is imported here: the ``lammps`` package imports :mod:`.plugin` for its entry
point."""
