-- The master table as the 2014 tool's users have it (MySQL/MariaDB, table v11_1 of database blkr).
-- `[sql] table` in batch.cfg names it; `BatchProcess.py JOB new` takes every obsid from it,
-- and uses pipetime (seconds) to start the longest obsids first.
CREATE TABLE IF NOT EXISTS `v11_1` (
  `obsid` int(10) NOT NULL,
  `OD` int(4) DEFAULT NULL,
  `pipelined` int(1) DEFAULT '0',
  `mode` char(60) DEFAULT NULL,
  `aotlabel` char(100) DEFAULT NULL,
  `obstime` int(6) DEFAULT NULL,
  `max_level` char(25) DEFAULT NULL,
  `pipetime` int(5) DEFAULT NULL,
  `savetime` int(5) DEFAULT NULL,
  `band` char(2) DEFAULT NULL,
  `lomin` float DEFAULT NULL,
  `lomax` float DEFAULT NULL,
  `target` char(50) DEFAULT NULL,
  PRIMARY KEY (`obsid`)
) ENGINE=InnoDB DEFAULT CHARSET=latin1;
