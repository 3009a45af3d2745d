// A webhook receiver written exactly like the spec's Node.js example, with node's `http` module and
// JSON.parse of the body standing in for express.json(). Usage: node tests/spec_receiver.js <port> <secret>
// Answers 200 when the X-Webhook-Signature verifies, 401 otherwise.
const crypto = require('crypto');
const http = require('http');

// Copied from the spec ("Verifying Webhook Signatures", Node.js Example).
function verifyWebhookSignature(payload, signature, secret) {
  const expectedSignature = crypto
    .createHmac('sha256', secret)
    .update(JSON.stringify(payload))
    .digest('hex');

  return crypto.timingSafeEqual(
    Buffer.from(signature),
    Buffer.from(expectedSignature)
  );
}

const port = Number(process.argv[2]);
const secret = process.argv[3];

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    let valid = false;
    try {
      // What express.json() does: decode as UTF-8 and JSON.parse.
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      const signature = req.headers['x-webhook-signature'];
      valid = verifyWebhookSignature(body, signature, secret);
    } catch (err) {
      valid = false;
    }
    if (!valid) {
      res.writeHead(401, { 'Content-Type': 'text/plain' });
      res.end('Invalid signature');
      return;
    }
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    res.end('OK');
  });
});

server.listen(port, '127.0.0.1');
process.on('SIGTERM', () => server.close(() => process.exit(0)));
