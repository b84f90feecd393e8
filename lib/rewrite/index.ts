/**
 * rewrite/: translation of frames between sequence spaces. Ingress: client
 * frames made to fit the backup. (Egress translation after failover comes
 * with the failover stage.)
 */
export * from './ingress';
export * from './backup-ingress';
