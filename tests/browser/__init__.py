"""Tests in a real browser: Debian's Chromium, headless, driven by Selenium and chromedriver
(`make system-deps` installs both; a machine without them fails these tests, never skips)."""
