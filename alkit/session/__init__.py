"""Human-in-the-loop annotation sessions: the active-learning loop over a folder, one step per command.

A session (``alkit session init DIR``) is the loop of :mod:`alkit.al.loop` cut at the points where people
work: ``next`` writes a cycle's regions for annotators (QuPath GeoJSON, ASAP XML, a checklist),
``ingest`` reads what they drew back into the labeled pool, ``train`` fits and evaluates the task,
``status`` says where the session stands. Every step is a file change made atomically under ``DIR``
(:mod:`alkit.session.state`), so a session resumes from any point, on any machine that sees the folder.
A simulated oracle (a cohort's ground truth) answers ``ingest`` through the same code path, which is
how a study and a human session stay one loop.
"""
