"""The Textual console: screens for library, data, search, review and training over ``console.service``."""
