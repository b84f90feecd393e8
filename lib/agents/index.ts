/**
 * agents/: sync agents, separate processes that speak protocol v1 to the
 * bridge's agent socket. The lab agent moves no state (netns lab, tests).
 */
export * from './lab-agent';
