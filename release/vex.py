#!/usr/bin/env python3
"""The release's VEX: release/vex.json (one hand-kept list, per vulnerability:
id, component of build/deps.lock, CycloneDX analysis state, justification or
response, detail, the fixing patch) turned into

  - the CycloneDX 1.5 `vulnerabilities` of the SBOM (release/sbom.py calls
    vulnerabilities()), each affecting its component's bom-ref;
  - the table of SECURITY.md (`vex.py --markdown` prints it; the test checks
    that SECURITY.md carries exactly these rows).

An id is a CVE or GHSA id where one exists.  An upstream fix without one (the
lua-nginx-module fixes after the pinned tag) is named COMPONENT@COMMIT and
carries the URL of that commit, which becomes its source.

    vex.py [--vex FILE] --markdown
"""
import argparse
import json
import pathlib
import re
import sys

VEX = pathlib.Path(__file__).resolve().parent / 'vex.json'
# Ids with a public database of their own; any other id needs a "url".
ADVISORY_ID = re.compile(r'CVE-\d{4}-\d{4,}|GHSA(-[0-9a-z]{4}){3}')
STATES = ('resolved', 'resolved_with_pedigree', 'exploitable', 'in_triage', 'false_positive', 'not_affected')
# How SECURITY.md names each state for people.
STATE_WORDS = {
    'resolved': 'fixed (upstream release)',
    'resolved_with_pedigree': 'fixed (patch)',
    'exploitable': 'affected, mitigation',
    'in_triage': 'under analysis',
    'false_positive': 'not a vulnerability',
    'not_affected': 'not affected',
}


def load(path=VEX):
    vulns = json.loads(pathlib.Path(path).read_text())['vulnerabilities']
    seen = set()
    for v in vulns:
        key = (v['id'], v['component'])
        if key in seen:
            sys.exit('vex.json: %s listed twice for %s' % key)
        seen.add(key)
        if v['state'] not in STATES:
            sys.exit('vex.json: %s has unknown state %r' % (v['id'], v['state']))
        if v['state'] == 'not_affected' and 'justification' not in v:
            sys.exit('vex.json: %s is not_affected without a justification' % v['id'])
        if v['state'] == 'exploitable' and not v.get('response'):
            sys.exit('vex.json: %s is exploitable without a response' % v['id'])
        if not ADVISORY_ID.fullmatch(v['id']) and not v.get('url', '').startswith('https://'):
            sys.exit('vex.json: %s is neither a CVE nor a GHSA id and has no https url' % v['id'])
    return vulns


def source(v):
    """Where the vulnerability is described: NVD, GitHub's advisories, or the
    upstream commit that fixed it."""
    if v['id'].startswith('CVE-'):
        return {'name': 'NVD', 'url': 'https://nvd.nist.gov/vuln/detail/' + v['id']}
    if v['id'].startswith('GHSA-'):
        return {'name': 'GitHub', 'url': 'https://github.com/advisories/' + v['id']}
    return {'name': v['component'] + ' upstream', 'url': v['url']}


def vulnerabilities(component_refs, path=VEX):
    """CycloneDX 1.5 vulnerabilities; component_refs: lock component name -> bom-ref."""
    out = []
    for v in load(path):
        if v['component'] not in component_refs:
            sys.exit('vex.json: %s names %s, which is not in the SBOM' % (v['id'], v['component']))
        analysis = {'state': v['state']}
        if 'justification' in v:
            analysis['justification'] = v['justification']
        if v.get('response'):
            analysis['response'] = v['response']
        detail = v['detail'] + (' Fixed by: %s.' % v['fixed_by'] if v.get('fixed_by') else '')
        analysis['detail'] = detail
        out.append({'bom-ref': 'vex:%s:%s' % (v['component'], v['id']), 'id': v['id'],
                    'source': source(v), 'analysis': analysis,
                    'affects': [{'ref': component_refs[v['component']]}]})
    return out


def markdown_rows(path=VEX):
    rows = []
    for v in load(path):
        what = v['detail'].replace('|', '\\|')
        if v.get('fixed_by'):
            what += ' Fixed by `%s`.' % v['fixed_by']
        rows.append('| %s | %s | %s | %s |' % (v['id'], v['component'], STATE_WORDS[v['state']], what))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--vex', type=pathlib.Path, default=VEX)
    ap.add_argument('--markdown', action='store_true', required=True)
    a = ap.parse_args()
    print('| id | component | status | what, and the mitigation where affected |')
    print('|---|---|---|---|')
    print('\n'.join(markdown_rows(a.vex)))


if __name__ == '__main__':
    main()
