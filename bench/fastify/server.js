'use strict'
// The Node baseline of bench/fastify_vs_apigate.py: one fastify process proxying every request
// to one upstream, behind a Redis-backed @fastify/rate-limit (fixed window, ioredis client).
// Configured by environment: PORT, UPSTREAM (http://host:port), REDIS_PORT, LIMIT, WINDOW_MS.

const Fastify = require('fastify')
const Redis = require('ioredis')

function setting (name) {
  const value = process.env[name]
  if (!value) {
    console.error(`${name} is required`)
    process.exit(2)
  }
  return value
}

async function main () {
  const port = Number(setting('PORT'))
  const redis = new Redis({
    host: '127.0.0.1',
    port: Number(setting('REDIS_PORT')),
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1
  })
  await new Promise((resolve, reject) => {
    redis.once('ready', resolve)
    redis.once('error', reject)
  })
  const app = Fastify({ logger: false })
  await app.register(require('@fastify/rate-limit'), {
    global: true,
    max: Number(setting('LIMIT')),
    timeWindow: Number(setting('WINDOW_MS')),
    redis,
    nameSpace: 'fastify-bench-',
    skipOnError: true
  })
  await app.register(require('@fastify/http-proxy'), {
    upstream: setting('UPSTREAM'),
    http2: false
  })
  await app.listen({ host: '127.0.0.1', port })
  const stop = async () => {
    await app.close()
    redis.disconnect()
    process.exit(0)
  }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
