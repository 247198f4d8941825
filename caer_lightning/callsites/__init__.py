"""Activation call sites that are not modules of their own: functions held as attributes (`attributes`),
functional calls and repeated module calls in a module's own methods (`split`, which reads the source with
`source`, finds the calls with `finder` and rewrites them with `rewrite`). `forms` says which functions stand
for which activation class."""
