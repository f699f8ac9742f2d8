"""nbval settings: HTML renderings (pandas tables) duplicate the text/plain output that is
compared, and differ in markup between library versions, so they are not compared."""


def pytest_collectstart(collector):
    if hasattr(collector, "skip_compare"):
        collector.skip_compare += ("text/html", "application/vnd.jupyter.widget-view+json")
