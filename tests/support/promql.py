"""Prometheus text (0.0.4) parsed into series, and dashboards' PromQL
queries checked against them: each selector (a metric name with its label
matchers) must match at least one scraped series.  Enough PromQL for the
dashboards' queries (selectors inside rate/sum/by), not a PromQL engine."""
import re

LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
SAMPLE = re.compile(r'^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})? (\S+)$')
SELECTOR = re.compile(r'([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?')
MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
LABEL_VALUES = re.compile(r'^label_values\((\w+),\s*(\w+)\)$')
# words of PromQL that look like metric names
KEYWORDS = {'sum', 'rate', 'irate', 'increase', 'by', 'without', 'avg', 'max', 'min',
            'count', 'histogram_quantile', 'le', 'topk', 'delta', 'deriv', 'label_values'}


def parse(text):
    """{'series': [(name, {label: value}, value)], 'types': {family: type}}"""
    series, types = [], {}
    for line in text.splitlines():
        if line.startswith('# TYPE '):
            _, _, name, typ = line.split(' ', 3)
            types[name] = typ
            continue
        if not line or line.startswith('#'):
            continue
        m = SAMPLE.match(line)
        assert m, 'not a sample line: %r' % line
        labels = dict(LABEL.findall(m.group(2) or ''))
        series.append((m.group(1), labels, float(m.group(3))))
    return {'series': series, 'types': types}


def _matches(labels, matchers):
    for k, op, v in matchers:
        have = labels.get(k, '')
        if op == '=' and have != v:
            return False
        if op == '!=' and have == v:
            return False
        if op == '=~' and not re.fullmatch(v, have):
            return False
        if op == '!~' and re.fullmatch(v, have):
            return False
    return True


def selectors(expr, variables):
    """[(metric, [(label, op, value)])] of a query; $VAR replaced by its
    value, matchers on `instance` (a label Prometheus adds) dropped."""
    for var, val in sorted(variables.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace('$' + var, val)
    m = LABEL_VALUES.match(expr)
    if m:
        label = m.group(2)
        return [(m.group(1), [] if label == 'instance' else [(label, '=~', '.+')])]
    expr = re.sub(r'\[[^\]]*\]', '', expr)          # range selectors
    expr = re.sub(r'\b(by|without)\s*\([^)]*\)', '', expr)
    out = []
    for m in SELECTOR.finditer(expr):
        name = m.group(1)
        if name in KEYWORDS and not m.group(2):
            continue
        matchers = [(k, op, v) for k, op, v in MATCHER.findall(m.group(2) or '')
                    if k != 'instance']
        out.append((name, matchers))
    return out


def unanswered(queries, scrape, variables):
    """The queries (with the selector that fails) no scraped series answers."""
    missing = []
    for q in queries:
        sels = selectors(q, variables)
        assert sels, 'no selector found in %r' % q
        for name, matchers in sels:
            if not any(n == name and _matches(l, matchers) for n, l, _ in scrape['series']):
                missing.append((q, name, matchers))
    return missing


def values(scrape, name, **labels):
    """The values of name's series whose labels include labels."""
    return [v for n, l, v in scrape['series']
            if n == name and all(l.get(k) == x for k, x in labels.items())]
