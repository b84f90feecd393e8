import { reportFromLog } from '../../../lib/report';

const line = (ms: number, event: string, fields: Record<string, unknown>) =>
  `${JSON.stringify({ ts: new Date(Date.parse('2026-01-01T00:00:00Z') + ms).toISOString(), level: 'info', event, ...fields })}\n`;

describe('the HTML report', () => {
  const evil = 'tcp <script>alert(1)</script> > "x"';
  const html = reportFromLog(
    line(0, 'started', { name: 'lab' })
    + line(10, 'mismatch', { flow: evil, kind: 'data', offset: 5, excerptOffset: 0, primary: '"</script><b>"', backup: '"abc"' })
    + line(20, 'checkpoint-done', { epoch: 1, reason: 'mismatch', ms: 4 })
    + line(900, 'released', { flow: evil, frames: 1, bytes: 10, windowMs: 800 }),
    'a <title> & more',
  );

  it('needs nothing outside the file: no external scripts, styles, images or links', () => {
    expect(html).not.toMatch(/\b(src|href)\s*=/i);
    expect(html).not.toMatch(/@import|url\(/i);
  });

  it('escapes what the log says, in the markup and in the embedded data', () => {
    expect(html).not.toContain('<script>alert(1)');
    expect(html).toContain('&lt;script&gt;alert(1)&lt;/script&gt;');
    expect(html.match(/<\/script>/g)).toHaveLength(2); // the data block and the page script, nothing from the log
    expect(html).toContain('<title>a &lt;title&gt; &amp; more</title>');
  });

  it('draws one mark per mismatch, checkpoint and release of the log', () => {
    expect(html.match(/class="mark mismatch"/g)).toHaveLength(1);
    expect(html.match(/class="mark checkpoint /g)).toHaveLength(1);
    expect(html.match(/class="mark release"/g)).toHaveLength(1);
    expect(html).toContain('data-mismatch="1"');
  });
});
