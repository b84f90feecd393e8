/**
 * rewrite/: translation of frames between sequence spaces. Ingress: client
 * frames made to fit the backup. Egress: a promoted backup's frames made to
 * fit what the client knows.
 */
export * from './ingress';
export * from './egress';
