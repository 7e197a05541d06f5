"""Plumbing every mediacdn service shares: errors, problem+json, logging, hashing, runner."""
